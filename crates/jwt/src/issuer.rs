//! One trusted issuer: its name, audiences, keys, clock leeway and claim mapping.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

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
    /// Which of subject, roles and scopes still hold their defaults.
    defaults: [bool; 3],
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

    /// How often fetched keys are refreshed (5 minutes by default).
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

    /// Clock skew tolerated for `exp`, `nbf` and `iat` (60 s by default).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Requires the header's `typ` to be this (compared case-insensitively, with or
    /// without `application/`): `at+jwt` for RFC 9068 access tokens. Call again to accept
    /// several. Without it any `typ` is accepted.
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
                    allow_http: self.allow_http,
                    refresh_every: self.refresh_every,
                    min_interval: self.min_refresh_interval,
                    timeout: self.fetch_timeout,
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
            leeway_secs: i64::try_from(self.leeway.as_secs()).unwrap_or(i64::MAX),
            token_types: self.token_types.clone(),
            subject: self.subject.clone(),
            roles: self.roles.clone(),
            scopes: self.scopes.clone(),
            attributes: self.attributes.clone(),
            tier: self.tier.clone(),
            ring,
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
    let lower_prefix = typ.len() >= 12 && typ[..12].eq_ignore_ascii_case("application/");
    if lower_prefix {
        &typ[12..]
    } else {
        typ
    }
}

/// An issuer ready for requests.
#[derive(Debug)]
pub(crate) struct CompiledIssuer {
    pub(crate) name: Arc<str>,
    pub(crate) audiences: Vec<String>,
    pub(crate) any_audience: bool,
    pub(crate) leeway_secs: i64,
    pub(crate) token_types: Vec<String>,
    pub(crate) subject: Vec<ClaimPath>,
    pub(crate) roles: Vec<ClaimPath>,
    pub(crate) scopes: Vec<ClaimPath>,
    pub(crate) attributes: Vec<(ClaimPath, String)>,
    pub(crate) tier: Option<ClaimPath>,
    pub(crate) ring: Arc<KeyRing>,
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
