//! One trusted issuer: its name, audiences, keys, clock leeway and claim mapping.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use portcullis_core::{AuthMethod, CredentialCheck};

use crate::claims::{ClaimPath, InvalidClaimPath};
use crate::key::VerifyingKey;
use crate::keyring::KeyRing;
use crate::layer::ConfigError;

/// A token issuer the layer trusts, with its own keys and audiences.
///
/// A token is matched to its issuer by `iss`, then verified only with that issuer's
/// keys; a layer can trust several issuers. An audience is required: configure the ones
/// this service answers to with [`Issuer::audience`], or say explicitly that any
/// audience will do with [`Issuer::accept_any_audience`].
///
/// ```
/// use std::time::Duration;
/// use jsonwebtoken::Algorithm;
/// use portcullis_jwt::{Issuer, VerifyingKey};
///
/// let issuer = Issuer::new("https://login.example.com/realms/acme")
///     .audience("key-service")
///     .key(VerifyingKey::hmac(Algorithm::HS256, &[7; 32])?)
///     .leeway(Duration::from_secs(30))
///     .token_type("at+jwt")
///     .roles_claim("realm_access.roles")?
///     .scopes_claim("scope")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Issuer {
    pub(crate) name: String,
    pub(crate) audiences: Vec<String>,
    pub(crate) any_audience: bool,
    pub(crate) keys: Vec<VerifyingKey>,
    pub(crate) jwks_file: Option<PathBuf>,
    #[cfg(feature = "remote")]
    pub(crate) remote: Option<crate::keyring::RemoteSource>,
    #[cfg(feature = "remote")]
    pub(crate) http_client: Option<reqwest::Client>,
    pub(crate) allow_http: bool,
    pub(crate) refresh_every: Duration,
    pub(crate) min_refresh_interval: Duration,
    pub(crate) fetch_timeout: Duration,
    pub(crate) leeway: Duration,
    pub(crate) token_types: Vec<String>,
    pub(crate) subject: Vec<ClaimPath>,
    pub(crate) roles: Vec<ClaimPath>,
    pub(crate) scopes: Vec<ClaimPath>,
    pub(crate) attributes: Vec<(ClaimPath, String)>,
    pub(crate) tier: Option<ClaimPath>,
    pub(crate) alias: Option<String>,
    pub(crate) max_key_age: Option<Duration>,
    pub(crate) credentials: Option<SessionCredentials>,
    /// Which of subject, roles and scopes still hold their defaults.
    defaults: [bool; 3],
}

/// The credential check of an issuer whose tokens name the credential they were issued
/// to (claim `cred`, as [`TokenIssuer`](crate::TokenIssuer) writes it).
#[derive(Clone)]
pub(crate) struct SessionCredentials(pub(crate) Arc<dyn CredentialCheck>);

impl fmt::Debug for SessionCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let methods: Vec<&str> = AuthMethod::ALL
            .iter()
            .filter(|method| self.0.checks(**method))
            .map(|method| method.as_str())
            .collect();
        f.debug_struct("CredentialCheck")
            .field("methods", &methods)
            .finish()
    }
}

impl Issuer {
    /// An issuer, named exactly as its tokens write `iss`. Defaults: 60 s leeway, `sub`
    /// as the principal's id, roles from `roles`, scopes from `scope` (space-separated)
    /// and `scp` (an array).
    pub fn new(name: impl Into<String>) -> Self {
        let path = |p: &str| ClaimPath::parse(p).expect("a valid built-in claim path");
        Self {
            name: name.into(),
            audiences: Vec::new(),
            any_audience: false,
            keys: Vec::new(),
            jwks_file: None,
            #[cfg(feature = "remote")]
            remote: None,
            #[cfg(feature = "remote")]
            http_client: None,
            allow_http: false,
            refresh_every: Duration::from_secs(300),
            min_refresh_interval: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(5),
            leeway: Duration::from_secs(60),
            token_types: Vec::new(),
            subject: vec![path("sub")],
            roles: vec![path("roles")],
            scopes: vec![path("scope"), path("scp")],
            attributes: Vec::new(),
            tier: None,
            alias: None,
            max_key_age: Some(DEFAULT_MAX_KEY_AGE),
            credentials: None,
            defaults: [true; 3],
        }
    }

    /// Accepts tokens whose `aud` names `audience` (one of them, if called again).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// Accepts tokens for any audience, or none. Only for issuers that mint tokens for
    /// this service alone: otherwise a token meant for another service works here too.
    pub fn accept_any_audience(mut self) -> Self {
        self.any_audience = true;
        self
    }

    /// A key this issuer signs with.
    pub fn key(mut self, key: VerifyingKey) -> Self {
        self.keys.push(key);
        self
    }

    /// Keys from a JWKS file, read when the layer is built and again on
    /// [`JwtHandle::reload_key_files`](crate::JwtHandle::reload_key_files).
    pub fn jwks_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.jwks_file = Some(path.into());
        self
    }

    /// Keys from a JWKS URL, fetched in the background every
    /// [`refresh_every`](Self::refresh_every) and when a token names an unknown `kid`.
    #[cfg(feature = "remote")]
    pub fn jwks_url(mut self, url: impl Into<String>) -> Self {
        self.remote = Some(crate::keyring::RemoteSource::Jwks(url.into()));
        self
    }

    /// Keys found through OpenID Connect discovery: `<issuer>/.well-known/openid-configuration`
    /// names the `jwks_uri`. The document must name this issuer.
    #[cfg(feature = "remote")]
    pub fn discover(mut self) -> Self {
        self.remote = Some(crate::keyring::RemoteSource::Discovery(self.name.clone()));
        self
    }

    /// The HTTP client that fetches this issuer's JWKS and discovery document, for a
    /// proxy, a private CA, a client certificate towards the identity provider, or a
    /// test double. Its own TLS, proxy and redirect settings apply: keep redirects off
    /// (`reqwest::redirect::Policy::none()`, what the built-in client does), since a key
    /// document that moved should be configured, not followed. The URL rules
    /// (`https`, or `http` on loopback) and [`fetch_timeout`](Self::fetch_timeout)
    /// still bound every fetch. `portcullis_jwt::reqwest` is the reqwest this takes.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis_jwt::{reqwest, Issuer};
    ///
    /// let client = reqwest::Client::builder()
    ///     .redirect(reqwest::redirect::Policy::none())
    ///     .connect_timeout(Duration::from_secs(2))
    ///     .build()?;
    /// let issuer = Issuer::new("https://login.example.com")
    ///     .audience("key-service")
    ///     .discover()
    ///     .http_client(client);
    /// # let _ = issuer;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "remote")]
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http_client = Some(client);
        self
    }

    /// How often fetched keys are refreshed (5 minutes by default). A key server's
    /// `Cache-Control: max-age` shortens it, down to
    /// [`min_refresh_interval`](Self::min_refresh_interval); `no-cache` or `no-store`
    /// refresh at that minimum. A longer `max-age` never stretches it.
    pub fn refresh_every(mut self, every: Duration) -> Self {
        self.refresh_every = every;
        self
    }

    /// The shortest time between two fetches, however many unknown `kid`s arrive
    /// (10 s by default).
    pub fn min_refresh_interval(mut self, interval: Duration) -> Self {
        self.min_refresh_interval = interval;
        self
    }

    /// How long one fetch may take, and how long a request waits for a refresh it asked
    /// for (5 s by default).
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// Fetches keys over plain `http://` from hosts other than loopback. Keys fetched in
    /// the clear can be replaced on the way; use it only inside a trusted network.
    pub fn allow_insecure_http(mut self) -> Self {
        self.allow_http = true;
        self
    }

    /// Clock skew tolerated for `exp`, `nbf` and `iat` (60 s by default), to the
    /// millisecond.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Requires the header's `typ` to be this (compared case-insensitively, with or
    /// without `application/`): `at+jwt` for RFC 9068 access tokens. Call again to accept
    /// several. Without it a token is accepted when it has no `typ` or one of
    /// [`DEFAULT_TOKEN_TYPES`] (`JWT`, `at+jwt`); every other type (logout tokens,
    /// security event tokens, DPoP proofs, …) is refused with `invalid_token_type`, so a
    /// token minted for another purpose never passes as an access token.
    pub fn token_type(mut self, typ: impl Into<String>) -> Self {
        self.token_types.push(normalize_typ(&typ.into()).to_owned());
        self
    }

    /// The claim that names the principal (`sub` by default). Called several times, the
    /// first claim present wins, for example `sub` then `client_id`.
    pub fn subject_claim(mut self, path: &str) -> Result<Self, InvalidClaimPath> {
        replace_default(
            &mut self.subject,
            &mut self.defaults[0],
            ClaimPath::parse(path)?,
        );
        Ok(self)
    }

    /// Reads roles from this claim path instead of `roles`; call again to add more
    /// paths.
    pub fn roles_claim(mut self, path: &str) -> Result<Self, InvalidClaimPath> {
        replace_default(
            &mut self.roles,
            &mut self.defaults[1],
            ClaimPath::parse(path)?,
        );
        Ok(self)
    }

    /// Reads scopes from this claim path instead of `scope` and `scp`; call again to add
    /// more paths.
    pub fn scopes_claim(mut self, path: &str) -> Result<Self, InvalidClaimPath> {
        replace_default(
            &mut self.scopes,
            &mut self.defaults[2],
            ClaimPath::parse(path)?,
        );
        Ok(self)
    }

    /// Copies a string claim into the principal's attributes under `attribute`, for
    /// rate-limit keys and audit (`org`, `tenant`, …).
    pub fn attribute_claim(
        mut self,
        path: &str,
        attribute: impl Into<String>,
    ) -> Result<Self, InvalidClaimPath> {
        self.attributes
            .push((ClaimPath::parse(path)?, attribute.into()));
        Ok(self)
    }

    /// The name that qualifies this issuer's principals when the layer trusts several
    /// issuers (the issuer's name by default). With more than one issuer a principal's id
    /// is `<alias>#<sub>`, so `sub: alice` from two issuers is two principals everywhere
    /// the id is used: role rules, rate-limit keys, audit events. With one issuer the id
    /// is the subject as it is. An alias is non-empty, holds no `#`, whitespace or
    /// control character, and is unique in the layer.
    pub fn alias(mut self, alias: impl Into<String>) -> Self {
        self.alias = Some(alias.into());
        self
    }

    /// How long the last good keys fetched from a key server stay trusted while every
    /// refresh fails (24 hours by default). Past it, tokens of this issuer are refused
    /// with 503 `keys_unavailable` and an error is logged saying since when, until a
    /// fetch succeeds again. Only for keys fetched with `jwks_url` or `discover`.
    pub fn max_key_age(mut self, age: Duration) -> Self {
        self.max_key_age = Some(age);
        self
    }

    /// Keeps using the last good fetched keys for as long as the key server stays
    /// unreachable, however long that is. A key the issuer has withdrawn (because it
    /// leaked) then stays trusted here until the server answers again.
    pub fn trust_stale_keys_indefinitely(mut self) -> Self {
        self.max_key_age = None;
        self
    }

    /// Asks `check`, on every request (each answer cached for the layer's
    /// [`credential_cache`](crate::JwtLayerBuilder::credential_cache) time), whether the
    /// credential a token was issued to is still good; refuses with 401
    /// `credential_revoked` when it is not. Only tokens that name their credential
    /// (`cred` and `auth_method`, as [`TokenIssuer`](crate::TokenIssuer) writes them) are
    /// asked about; [`TokenIssuer::validating_issuer`](crate::TokenIssuer::validating_issuer)
    /// sets this from the issuer's own check.
    pub fn credential_check(mut self, check: impl CredentialCheck) -> Self {
        self.credentials = Some(SessionCredentials(Arc::new(check)));
        self
    }

    /// Takes the principal's rate-limit tier from this string claim.
    pub fn tier_claim(mut self, path: &str) -> Result<Self, InvalidClaimPath> {
        self.tier = Some(ClaimPath::parse(path)?);
        Ok(self)
    }

    pub(crate) fn compile(
        &self,
        generation: &Arc<AtomicU64>,
    ) -> Result<CompiledIssuer, ConfigError> {
        let name: Arc<str> = self.name.as_str().into();
        if self.name.is_empty() {
            return Err(ConfigError::Issuer(
                String::new(),
                "the issuer name is empty".into(),
            ));
        }
        if self.audiences.is_empty() && !self.any_audience {
            return Err(ConfigError::Issuer(
                self.name.clone(),
                "no audience: add .audience(\"your-api\"), or .accept_any_audience() if every token of this issuer is meant for this service".into(),
            ));
        }
        // Durations that would make the fetcher spin or never succeed.
        for (setting, value) in [
            ("refresh_every", self.refresh_every),
            ("min_refresh_interval", self.min_refresh_interval),
            ("fetch_timeout", self.fetch_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Issuer(
                    self.name.clone(),
                    format!("{setting} is zero; give it a positive duration (see its default in the docs)"),
                ));
            }
        }
        #[cfg(feature = "remote")]
        let remote = self.remote.is_some();
        #[cfg(not(feature = "remote"))]
        let remote = false;
        if self.keys.is_empty() && self.jwks_file.is_none() && !remote {
            return Err(ConfigError::Issuer(
                self.name.clone(),
                "no keys: add .key(..), .jwks_file(..), .jwks_url(..) or .discover()".into(),
            ));
        }
        #[allow(unused_mut)]
        let mut ring = KeyRing::new(
            name.clone(),
            self.keys.clone(),
            self.jwks_file.clone(),
            generation.clone(),
        )
        .map_err(|e| ConfigError::Issuer(self.name.clone(), e.to_string()))?;
        #[cfg(feature = "remote")]
        if let Some(source) = &self.remote {
            let url = match source {
                crate::keyring::RemoteSource::Jwks(url)
                | crate::keyring::RemoteSource::Discovery(url) => url,
            };
            crate::keyring::check_url(url, self.allow_http)
                .map_err(|why| ConfigError::Issuer(self.name.clone(), format!("{url}: {why}")))?;
            ring.remote = Some(
                crate::keyring::Remote::new(crate::keyring::RemoteSettings {
                    source: source.clone(),
                    client: self.http_client.clone(),
                    allow_http: self.allow_http,
                    refresh_every: self.refresh_every,
                    min_interval: self.min_refresh_interval,
                    timeout: self.fetch_timeout,
                    max_key_age: self.max_key_age,
                })
                .map_err(|e| ConfigError::Issuer(self.name.clone(), e.to_string()))?,
            );
        }
        let ring = Arc::new(ring);
        #[cfg(feature = "remote")]
        if ring.remote.is_some() {
            crate::keyring::spawn(&ring)
                .map_err(|why| ConfigError::Issuer(self.name.clone(), why.into()))?;
        }
        Ok(CompiledIssuer {
            name,
            audiences: self.audiences.clone(),
            any_audience: self.any_audience,
            leeway_ms: u64::try_from(self.leeway.as_millis()).unwrap_or(u64::MAX),
            token_types: self.token_types.clone(),
            subject: self.subject.clone(),
            roles: self.roles.clone(),
            scopes: self.scopes.clone(),
            attributes: self.attributes.clone(),
            tier: self.tier.clone(),
            alias: None,
            ring,
            credentials: self.credentials.clone(),
        })
    }
}

fn replace_default(paths: &mut Vec<ClaimPath>, is_default: &mut bool, path: ClaimPath) {
    if std::mem::take(is_default) {
        paths.clear();
    }
    paths.push(path);
}

/// `typ` compared as RFC 7515 4.1.9 says: case-insensitive, `application/` optional.
pub(crate) fn normalize_typ(typ: &str) -> &str {
    // Compared as bytes: slicing the text at 12 would panic inside a multi-byte
    // character (found by the `jwt_token` fuzz target). When the first 12 bytes are the
    // ASCII prefix, byte 12 is a character boundary.
    match typ.as_bytes().get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case(b"application/") => &typ[12..],
        _ => typ,
    }
}

/// An issuer ready for requests.
#[derive(Clone, Debug)]
pub(crate) struct CompiledIssuer {
    pub(crate) name: Arc<str>,
    pub(crate) audiences: Vec<String>,
    pub(crate) any_audience: bool,
    /// To the millisecond, as the clock is read: a leeway of 1.5 s is 1.5 s.
    pub(crate) leeway_ms: u64,
    pub(crate) token_types: Vec<String>,
    pub(crate) subject: Vec<ClaimPath>,
    pub(crate) roles: Vec<ClaimPath>,
    pub(crate) scopes: Vec<ClaimPath>,
    pub(crate) attributes: Vec<(ClaimPath, String)>,
    pub(crate) tier: Option<ClaimPath>,
    /// Set when the layer trusts several issuers: principal ids are `alias#sub`.
    pub(crate) alias: Option<Arc<str>>,
    pub(crate) ring: Arc<KeyRing>,
    pub(crate) credentials: Option<SessionCredentials>,
}

impl CompiledIssuer {
    /// Whether a token with this header `typ` may be one of this issuer's access tokens.
    pub(crate) fn accepts_type(&self, typ: Option<&str>) -> bool {
        if self.token_types.is_empty() {
            let Some(typ) = typ else {
                return true;
            };
            let typ = normalize_typ(typ);
            return DEFAULT_TOKEN_TYPES
                .iter()
                .any(|accepted| accepted.eq_ignore_ascii_case(typ));
        }
        // A required type must be present.
        let typ = typ.map(normalize_typ).unwrap_or("");
        self.token_types
            .iter()
            .any(|accepted| accepted.eq_ignore_ascii_case(typ))
    }
}

/// The `typ` values accepted when an issuer names none: plain JWTs and RFC 9068 access
/// tokens. A token without `typ` is accepted too.
pub const DEFAULT_TOKEN_TYPES: &[&str] = &["JWT", "at+jwt"];

/// How long fetched keys stay trusted while every refresh fails, by default.
pub const DEFAULT_MAX_KEY_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Checks an alias for [`Issuer::alias`]: the text that stands before `#` in ids.
pub(crate) fn check_alias(alias: &str) -> Result<(), &'static str> {
    if alias.is_empty() {
        return Err("the alias is empty");
    }
    if alias
        .chars()
        .any(|c| c == '#' || c.is_whitespace() || c.is_control())
    {
        return Err("an alias holds no '#', whitespace or control character: set a short one with .alias(\"corp\")");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typ_compares_like_a_media_type() {
        assert_eq!(normalize_typ("application/at+jwt"), "at+jwt");
        assert_eq!(normalize_typ("Application/AT+JWT"), "AT+JWT");
        assert_eq!(normalize_typ("at+jwt"), "at+jwt");
        assert_eq!(normalize_typ("JWT"), "JWT");
        // A multi-byte character across byte 12: compared, never sliced.
        assert_eq!(normalize_typ("a:1900000t\u{755}wt"), "a:1900000t\u{755}wt");
        assert_eq!(normalize_typ("applicationé/x"), "applicationé/x");
    }

    #[test]
    fn claim_paths_replace_the_defaults_then_add() {
        let issuer = Issuer::new("i")
            .roles_claim("realm_access.roles")
            .unwrap()
            .roles_claim("groups")
            .unwrap()
            .subject_claim("client_id")
            .unwrap();
        let roles: Vec<_> = issuer.roles.iter().map(ToString::to_string).collect();
        assert_eq!(roles, ["realm_access.roles", "groups"]);
        let subject: Vec<_> = issuer.subject.iter().map(ToString::to_string).collect();
        assert_eq!(subject, ["client_id"]);
        let scopes: Vec<_> = issuer.scopes.iter().map(ToString::to_string).collect();
        assert_eq!(scopes, ["scope", "scp"]);
    }

    #[test]
    fn an_issuer_needs_an_audience_and_keys() {
        let generation = Arc::new(AtomicU64::new(0));
        let err = Issuer::new("i")
            .key(crate::VerifyingKey::hmac(jsonwebtoken::Algorithm::HS256, &[1; 32]).unwrap())
            .compile(&generation)
            .unwrap_err();
        assert!(err.to_string().contains("no audience"), "{err}");
        let err = Issuer::new("i")
            .audience("a")
            .compile(&generation)
            .unwrap_err();
        assert!(err.to_string().contains("no keys"), "{err}");
    }
}
