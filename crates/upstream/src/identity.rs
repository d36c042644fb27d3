//! The layer, its builder and its service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use portcullis_core::{AuthMethod, Authentication, ClientIpResolver, Principal};
use tower_layer::Layer;
use tower_service::Service;

/// A mistake in the layer's settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Two settings name the same header.
    #[error("the header {0} is named twice: give each piece of identity its own header")]
    DuplicateHeader(HeaderName),
    /// A header the HTTP connection or the upstream's own authentication needs.
    #[error(
        "the header {0} cannot carry identity: it belongs to the connection or to the \
         upstream's own authentication; choose a name of your own, such as x-caller-id"
    )]
    ReservedHeader(HeaderName),
    /// Nothing would be written.
    #[error("no identity header is named: name at least one, or the assertion's")]
    Nothing,
}

/// Headers no identity may be written into.
const RESERVED: [&str; 10] = [
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "te",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "authorization",
    "cookie",
];

/// Which header carries what.
#[derive(Clone, Debug, Default)]
struct Names {
    principal: Option<HeaderName>,
    method: Option<HeaderName>,
    credential: Option<HeaderName>,
    roles: Option<HeaderName>,
    scopes: Option<HeaderName>,
    client_ip: Option<HeaderName>,
    /// A principal attribute, and its header.
    attributes: Vec<(String, HeaderName)>,
    /// Removed from every request and never written: headers of the upstream's that
    /// only the gateway may set.
    also_remove: Vec<HeaderName>,
}

/// A signed assertion of the caller's identity, in a header of its own.
#[cfg(feature = "assertion")]
#[derive(Clone, Debug)]
struct Assertion {
    header: HeaderName,
    issuer: portcullis_jwt::TokenIssuer,
}

/// Builds an [`IdentityHeadersLayer`].
#[derive(Clone, Debug)]
#[must_use]
pub struct IdentityHeadersBuilder {
    names: Names,
    prefer: Vec<AuthMethod>,
    resolver: ClientIpResolver,
    #[cfg(feature = "assertion")]
    assertion: Option<Assertion>,
}

impl IdentityHeadersBuilder {
    /// The principal's id.
    pub fn principal_header(mut self, name: HeaderName) -> Self {
        self.names.principal = Some(name);
        self
    }

    /// How the principal authenticated: `certificate`, `api_key`, `jwt` or `external`.
    pub fn method_header(mut self, name: HeaderName) -> Self {
        self.names.method = Some(name);
        self
    }

    /// The id of the credential (the API key's id, the certificate's thumbprint), when
    /// there is one.
    pub fn credential_header(mut self, name: HeaderName) -> Self {
        self.names.credential = Some(name);
        self
    }

    /// The principal's roles, comma-separated.
    pub fn roles_header(mut self, name: HeaderName) -> Self {
        self.names.roles = Some(name);
        self
    }

    /// The principal's scopes, space-separated (as OAuth writes them).
    pub fn scopes_header(mut self, name: HeaderName) -> Self {
        self.names.scopes = Some(name);
        self
    }

    /// The client's address, as the [`ClientIpResolver`] resolves it (behind trusted
    /// proxies, the address they forwarded), written for every request, with or
    /// without a principal.
    pub fn client_ip_header(mut self, name: HeaderName) -> Self {
        self.names.client_ip = Some(name);
        self
    }

    /// The principal's attribute `attribute` (from a key file, a JWT claim mapping, an
    /// external authorization answer).
    pub fn attribute_header(mut self, attribute: impl Into<String>, name: HeaderName) -> Self {
        self.names.attributes.push((attribute.into(), name));
        self
    }

    /// Headers that are never passed on from the client, though this layer writes
    /// nothing into them: names the upstream trusts for other reasons.
    pub fn also_remove(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.names.also_remove.extend(names);
        self
    }

    /// Which principal speaks for the request when several authenticated (a connector's
    /// certificate and a user's API key): the first of `methods` present. By default
    /// the caller's own credentials come before the machine's: JWT, API key, external,
    /// certificate.
    pub fn prefer(mut self, methods: impl IntoIterator<Item = AuthMethod>) -> Self {
        self.prefer = methods.into_iter().collect();
        self
    }

    /// How the client address is resolved (the socket peer by default).
    pub fn client_ip(mut self, resolver: ClientIpResolver) -> Self {
        self.resolver = resolver;
        self
    }

    /// Also sends a signed assertion of the principal in `header`: a token from
    /// `issuer`, which names the gateway as its issuer and the upstream as its
    /// audience. Make it with
    /// [`TokenIssuer::with_token_type`](portcullis_jwt::TokenIssuer::with_token_type)
    /// (a `typ` such as `identity+jwt`, so it is never taken for an access token) and
    /// a short [`lifetime`](portcullis_jwt::TokenIssuer::lifetime) (a minute).
    #[cfg(feature = "assertion")]
    pub fn assertion(mut self, header: HeaderName, issuer: portcullis_jwt::TokenIssuer) -> Self {
        self.assertion = Some(Assertion { header, issuer });
        self
    }

    /// The layer, or what is wrong with the settings.
    pub fn build(self) -> Result<IdentityHeadersLayer, ConfigError> {
        let names = &self.names;
        #[cfg_attr(not(feature = "assertion"), allow(unused_mut))]
        let mut written: Vec<&HeaderName> = [
            &names.principal,
            &names.method,
            &names.credential,
            &names.roles,
            &names.scopes,
            &names.client_ip,
        ]
        .into_iter()
        .flatten()
        .chain(names.attributes.iter().map(|(_, name)| name))
        .collect();
        #[cfg(feature = "assertion")]
        if let Some(assertion) = &self.assertion {
            written.push(&assertion.header);
        }
        if written.is_empty() {
            return Err(ConfigError::Nothing);
        }
        let mut all = written.clone();
        all.extend(names.also_remove.iter());
        for (i, name) in all.iter().enumerate() {
            if RESERVED.contains(&name.as_str()) {
                return Err(ConfigError::ReservedHeader((*name).clone()));
            }
            if all[..i].contains(name) {
                return Err(ConfigError::DuplicateHeader((*name).clone()));
            }
        }
        let remove = all.into_iter().cloned().collect();
        Ok(IdentityHeadersLayer {
            shared: Arc::new(Shared {
                remove,
                names: self.names,
                prefer: self.prefer,
                resolver: self.resolver,
                #[cfg(feature = "assertion")]
                assertion: self.assertion,
            }),
        })
    }
}

struct Shared {
    /// Every header this layer owns: removed from each request before anything is
    /// written.
    remove: Vec<HeaderName>,
    names: Names,
    prefer: Vec<AuthMethod>,
    resolver: ClientIpResolver,
    #[cfg(feature = "assertion")]
    assertion: Option<Assertion>,
}

/// Writes the caller's identity into request headers for the service behind it, after
/// removing the client's copies of every header it owns. See the crate documentation.
#[derive(Clone)]
pub struct IdentityHeadersLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for IdentityHeadersLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityHeadersLayer")
            .field("headers", &self.shared.remove)
            .field("prefer", &self.shared.prefer)
            .finish_non_exhaustive()
    }
}

impl IdentityHeadersLayer {
    /// A builder with no header named yet.
    pub fn builder() -> IdentityHeadersBuilder {
        IdentityHeadersBuilder {
            names: Names::default(),
            prefer: vec![
                AuthMethod::Jwt,
                AuthMethod::ApiKey,
                AuthMethod::External,
                AuthMethod::Certificate,
            ],
            resolver: ClientIpResolver::new(),
            #[cfg(feature = "assertion")]
            assertion: None,
        }
    }
}

impl<S> Layer<S> for IdentityHeadersLayer {
    type Service = IdentityHeaders<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdentityHeaders {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service built by [`IdentityHeadersLayer`].
#[derive(Clone)]
pub struct IdentityHeaders<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for IdentityHeaders<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityHeaders")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for IdentityHeaders<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        self.shared.rewrite(&mut request);
        self.inner.call(request)
    }
}

impl Shared {
    fn rewrite<B>(&self, request: &mut Request<B>) {
        // Every line of every owned name goes, whatever happens next: an upstream must
        // never see a value the client wrote.
        for name in &self.remove {
            while request.headers_mut().remove(name).is_some() {}
        }
        let names = &self.names;
        if let Some(name) = &names.client_ip {
            if let Ok(ip) = self
                .resolver
                .resolve_reusing(request.extensions(), request.headers())
            {
                set(request.headers_mut(), name, &ip.ip().to_string());
            }
        }
        let auth = Authentication::from_extensions(request.extensions());
        let Some(principal) = self.principal(&auth) else {
            return;
        };
        let headers = request.headers_mut();
        if let Some(name) = &names.principal {
            set(headers, name, &encode(principal.id()));
        }
        if let Some(name) = &names.method {
            set(headers, name, principal.method().as_str());
        }
        if let (Some(name), Some(id)) = (&names.credential, principal.credential_id()) {
            set(headers, name, &encode(id));
        }
        if let Some(name) = &names.roles {
            set(headers, name, &join(principal.roles(), ","));
        }
        if let Some(name) = &names.scopes {
            set(headers, name, &join(principal.scopes(), " "));
        }
        for (attribute, name) in &names.attributes {
            if let Some(value) = principal.attribute(attribute) {
                set(headers, name, &encode(value));
            }
        }
        #[cfg(feature = "assertion")]
        if let Some(assertion) = &self.assertion {
            match assertion.issuer.issue(principal, None) {
                Ok(token) => set(headers, &assertion.header, token.expose()),
                // The upstream then sees no assertion, as for an anonymous caller.
                Err(error) => portcullis_core::log_throttled!(
                    warn,
                    %error,
                    "identity headers: the assertion could not be signed; sent without it"
                ),
            }
        }
    }

    fn principal<'a>(&self, auth: &'a Authentication) -> Option<&'a Principal> {
        self.prefer.iter().find_map(|method| auth.get(*method))
    }
}

fn set(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    // Encoded values are visible ASCII, so this holds; were it not to, nothing is
    // written rather than something else.
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name.clone(), value);
    }
}

/// Items percent-encoded, so that none can look like two (a role with a comma) or
/// break the header (a control character), then joined by `separator`.
fn join(items: &[String], separator: &str) -> String {
    items
        .iter()
        .map(|item| encode(item))
        .collect::<Vec<_>>()
        .join(separator)
}

/// Percent-encodes every byte but RFC 3986's unreserved characters and `:`, `@`, `/`,
/// `+`, `=` (common in ids and roles), so values are visible ASCII without commas or
/// spaces. Most values are unchanged.
fn encode(value: &str) -> String {
    let keep = |b: u8| b.is_ascii_alphanumeric() || b"-._~:@/+=".contains(&b);
    if value.bytes().all(keep) {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 8);
    for b in value.bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_cannot_split_or_break_a_header() {
        assert_eq!(encode("alice"), "alice");
        assert_eq!(encode("spiffe://prod/ns/a"), "spiffe://prod/ns/a");
        assert_eq!(encode("admin,user"), "admin%2Cuser");
        assert_eq!(
            encode("a b\r\nx: y"),
            "a%20b%0D%0Ax%3A%20y".replace("%3A", ":")
        );
        assert_eq!(encode("ключ"), "%D0%BA%D0%BB%D1%8E%D1%87");
        assert_eq!(
            join(&["a".into(), "b,c".into(), "100%".into()], ","),
            "a,b%2Cc,100%25"
        );
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let name = |n: &'static str| HeaderName::from_static(n);
        assert_eq!(
            IdentityHeadersLayer::builder().build().unwrap_err(),
            ConfigError::Nothing
        );
        assert_eq!(
            IdentityHeadersLayer::builder()
                .principal_header(name("x-user"))
                .roles_header(name("x-user"))
                .build()
                .unwrap_err(),
            ConfigError::DuplicateHeader(name("x-user"))
        );
        for reserved in RESERVED {
            let error = IdentityHeadersLayer::builder()
                .principal_header(HeaderName::from_static(reserved))
                .build()
                .unwrap_err();
            assert_eq!(error, ConfigError::ReservedHeader(name(reserved)));
        }
        assert_eq!(
            IdentityHeadersLayer::builder()
                .principal_header(name("x-user"))
                .also_remove([name("cookie")])
                .build()
                .unwrap_err(),
            ConfigError::ReservedHeader(name("cookie"))
        );
    }
}
