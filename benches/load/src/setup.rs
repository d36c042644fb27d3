//! The files a run serves from: the gateway's configuration (the example's layers over
//! plain HTTP), its role table, a key file, a token secret, a deny list, and the
//! credentials the load uses, valid and not.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use portcullis::api_key::{render_key_record, GeneratedKey, KeyPrefix, KeyRecord};
use portcullis::core::{AuthMethod, Clock, Principal};
use portcullis::jwt::jsonwebtoken::Algorithm;
use portcullis::jwt::{SigningKey, TokenIssuer};

/// The example's role table, so the routes open to the same roles as in the example.
const POLICY: &str = include_str!("../../../examples/gateway-policy.toml");

/// Where denied clients come from: a network of the loopback range, so that a client
/// can take an address in it.
pub(crate) const DENIED_NETWORK: &str = "127.255.0.0/16";

const ISSUER: &str = "https://gateway.local";
pub(crate) const AUDIENCE: &str = "hsm";

/// Credentials for the load, valid and not. Never printed.
pub(crate) struct Credentials {
    /// Valid API keys, each its own owner, role `key-reader`.
    pub(crate) api_keys: Vec<String>,
    /// Valid tokens of the gateway's issuer, each its own subject, roles `key-reader`
    /// and `signer`.
    pub(crate) tokens: Vec<String>,
    /// Well-formed keys with good checksums that no record holds.
    pub(crate) unknown_keys: Vec<String>,
    /// Tokens signed with another secret.
    pub(crate) forged_tokens: Vec<String>,
    /// Tokens of the right issuer whose `exp` has passed.
    pub(crate) expired_tokens: Vec<String>,
    /// RS256 tokens of the identity provider whose key set is `idp-jwks.json`, each its
    /// own subject, role `key-reader`.
    pub(crate) rs256_tokens: Vec<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("api_keys", &self.api_keys.len())
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

/// Writes the shared secret, key file, deny list and role table into `dir`, and makes
/// `count` credentials of each kind.
pub(crate) fn write_common(dir: &Path, count: usize) -> Result<Credentials, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("writing {name}: {e}"))
    };

    let mut secret = [0u8; 64];
    getrandom::fill(&mut secret).map_err(|e| format!("OS randomness: {e}"))?;
    write("token.secret", &URL_SAFE_NO_PAD.encode(secret))?;
    write("policy.toml", POLICY)?;
    write("deny.txt", &deny_list(10_000))?;
    write("policy-100.toml", &policy_100(false))?;
    write("policy-100-public.toml", &policy_100(true))?;

    let mut key_file = String::new();
    let mut api_keys = Vec::with_capacity(count);
    let mut unknown_keys = Vec::with_capacity(count);
    for i in 0..count {
        let key = generate_key()?;
        let record = KeyRecord::new(key.id(), format!("client-{i}"), key.digest())
            .map_err(|e| format!("key record: {e}"))?
            .roles(["key-reader"]);
        key_file.push_str(&render_key_record(&record));
        key_file.push('\n');
        api_keys.push(key.expose_secret().to_owned());
        unknown_keys.push(generate_key()?.expose_secret().to_owned());
    }
    write("api-keys.toml", &key_file)?;

    let issuer = token_issuer(&secret, Clock::system())?;
    let mut other_secret = [0u8; 64];
    getrandom::fill(&mut other_secret).map_err(|e| format!("OS randomness: {e}"))?;
    let forger = token_issuer(&other_secret, Clock::system())?;
    let (past, _) = Clock::manual(SystemTime::now() - Duration::from_secs(2 * 86_400));
    let expired = token_issuer(&secret, past)?.lifetime(Duration::from_secs(3600));

    let issue = |issuer: &TokenIssuer, i: usize| -> Result<String, String> {
        let principal = Principal::builder(format!("service-{i}"), AuthMethod::ApiKey)
            .roles(["key-reader", "signer"])
            .build();
        issuer
            .issue(&principal, None)
            .map(|token| token.expose().to_owned())
            .map_err(|e| format!("issuing a token: {e}"))
    };
    let mut tokens = Vec::with_capacity(count);
    let mut forged_tokens = Vec::with_capacity(count);
    let mut expired_tokens = Vec::with_capacity(count);
    for i in 0..count {
        tokens.push(issue(&issuer, i)?);
        forged_tokens.push(issue(&forger, i)?);
        expired_tokens.push(issue(&expired, i)?);
    }
    let idp_key = SigningKey::generate(Algorithm::RS256)
        .map_err(|e| format!("generating an RSA key: {e}"))?
        .with_kid("load-1");
    let jwks = serde_json::json!({ "keys": [idp_key.public_jwk()] });
    write("idp-jwks.json", &jwks.to_string())?;
    let idp = TokenIssuer::new(idp_key, IDP, AUDIENCE).map_err(|e| format!("{e}"))?;
    let rs256_tokens = (0..count)
        .map(|i| {
            let principal = Principal::builder(format!("user-{i}"), AuthMethod::Jwt)
                .roles(["key-reader"])
                .build();
            idp.issue(&principal, None)
                .map(|token| token.expose().to_owned())
                .map_err(|e| format!("issuing an RS256 token: {e}"))
        })
        .collect::<Result<_, _>>()?;
    Ok(Credentials {
        api_keys,
        tokens,
        unknown_keys,
        forged_tokens,
        expired_tokens,
        rs256_tokens,
    })
}

/// The identity provider whose RS256 tokens the CPU comparison sends to our JWT layer
/// and to `jwt-authorizer` alike.
pub(crate) const IDP: &str = "https://idp.load";

/// A role table of 100 rules: 96 for other services, then the key service's. The
/// request of every run, `GET /v1/key/default`, matches the last group; with `public`
/// its rule admits anyone (for the role router measured alone, without credentials).
fn policy_100(public: bool) -> String {
    let mut out = String::from("# Written by portcullis-load: 100 rules.\ndefault = \"deny\"\n");
    for i in 0..96 {
        out.push_str(&format!(
            "\n[[rule]]\nname = \"svc{i} read\"\nmethods = [\"GET\"]\npath = \"/v1/svc{i}/items/{{id}}\"\nroles_any = [\"svc{i}-reader\"]\n"
        ));
    }
    out.push_str(
        "\n[[rule]]\nname = \"health\"\nmethods = [\"GET\"]\npath = \"/health\"\npublic = true\n",
    );
    out.push_str("\n[[rule]]\nname = \"key write\"\nmethods = [\"PUT\", \"POST\", \"DELETE\"]\npath = \"/v1/key/**\"\nroles_any = [\"key-admin\"]\n");
    out.push_str("\n[[rule]]\nname = \"key attributes\"\nmethods = [\"GET\"]\npath = \"/v1/key/*/attributes\"\nroles_any = [\"key-reader\"]\n");
    let access = if public {
        "public = true"
    } else {
        "roles_any = [\"key-reader\"]"
    };
    out.push_str(&format!(
        "\n[[rule]]\nname = \"key read\"\nmethods = [\"GET\"]\npath = \"/v1/key/{{name}}\"\n{access}\n"
    ));
    out
}

fn generate_key() -> Result<GeneratedKey, String> {
    GeneratedKey::generate(&KeyPrefix::default()).map_err(|e| format!("generating a key: {e}"))
}

fn token_issuer(secret: &[u8], clock: Clock) -> Result<TokenIssuer, String> {
    let key = SigningKey::hmac(Algorithm::HS256, secret).map_err(|e| format!("{e}"))?;
    Ok(TokenIssuer::new(key, ISSUER, AUDIENCE)
        .map_err(|e| format!("{e}"))?
        .clock(clock))
}

/// `count` networks no client of the run comes from (IPv4 /24s and IPv6 /48s, as in
/// the criterion benches), and the one network the denied clients do come from.
fn deny_list(count: usize) -> String {
    let mut out = format!("# {count} networks, and the run's denied clients\n{DENIED_NETWORK}\n");
    for i in 0..count {
        if i % 4 == 3 {
            out.push_str(&format!("2001:db8:{:x}::/48\n", i));
        } else {
            out.push_str(&format!("10.{}.{}.0/24\n", i / 256 % 256, i % 256));
        }
    }
    out
}

/// The soak's gateway configuration: the layers of `examples/gateway.toml` in its
/// order except mtls-identity (there is no TLS), audit to hash-chained files in
/// `dir/audit-NAME`, the deny list, the key file and the role table, and the quotas
/// many clients meet: per address 50/s (burst 100), 10 failed logins per 15 minutes
/// with a ban after three refusals, per caller 50/s (burst 100). Returns its path.
pub(crate) fn write_gateway(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let (per_ip, per_caller) = (
        "rate = \"50/s\"\nburst = 100",
        "rate = \"50/s\"\nburst = 100",
    );
    let mut text = format!(
        "# Written by portcullis-load for one run; see benches/README.md.\n\
         [server]\nlisten = \"127.0.0.1:0\"\n\n\
         [token_issuer]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n\
         secret_file = \"token.secret\"\nbinding = \"never\"\n"
    );
    {
        text.push_str(&format!(
            r#"
[[layer]]
kind = "audit"
directory = "audit-{name}"

[[layer]]
kind = "ip-allowlist"
deny_file = "deny.txt"

[[layer]]
kind = "rate-limit"
[[layer.quota]]
name = "per-ip"
{per_ip}
key = ["client-ip"]
[[layer.quota]]
name = "auth-failures"
rate = "10 per 15m"
key = ["client-ip"]
charge = "unauthenticated"
ban = {{ strikes = 3, window = "1h", duration = "1h" }}

[[layer]]
kind = "api-key"
key_file = "api-keys.toml"
mode = "optional"
headers = ["x-api-key"]

[[layer]]
kind = "jwt"
mode = "optional"
trust_token_issuer = true

[[layer]]
kind = "rate-limit"
[[layer.quota]]
name = "per-caller"
{per_caller}
key = ["principal"]
when_key_missing = "skip"

[[layer]]
kind = "role-router"
policy = "policy.toml"
"#
        ));
    }
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, text).map_err(|e| format!("writing {}: {e}", config.display()))?;
    Ok(config)
}

/// One layer of the CPU comparison, as a `[[layer]]` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layer {
    /// To hash-chained daily files.
    Audit,
    /// Over 10,000 networks.
    IpAllowlist,
    /// Over 1,000 keys, required.
    ApiKey,
    /// Optional, so that the stack takes either credential.
    ApiKeyOptional,
    /// RS256 tokens of [`IDP`] from a key-set file, with the verified-token cache.
    Jwt,
    /// Optional, as above.
    JwtOptional,
    /// Per client address.
    RateLimitPerIp,
    /// Per credential (skipped when there is none).
    RateLimitPerCaller,
    /// 100 rules; the request's rule needs role `key-reader`.
    RoleRouter,
    /// 100 rules; the request's rule is public.
    RoleRouterPublic,
}

impl Layer {
    fn table(self, name: &str) -> String {
        let quota = "rate = \"1000000/s\"\nburst = 1000000";
        let jwt = |mode: &str| {
            format!(
                "[[layer]]\nkind = \"jwt\"\nmode = \"{mode}\"\n[[layer.issuer]]\nissuer = \"{IDP}\"\naudiences = [\"{AUDIENCE}\"]\njwks_file = \"idp-jwks.json\"\n"
            )
        };
        let api_key = |mode: &str| {
            format!("[[layer]]\nkind = \"api-key\"\nkey_file = \"api-keys.toml\"\nmode = \"{mode}\"\nheaders = [\"x-api-key\"]\n")
        };
        match self {
            Self::Audit => format!("[[layer]]\nkind = \"audit\"\ndirectory = \"audit-{name}\"\n"),
            Self::IpAllowlist => "[[layer]]\nkind = \"ip-allowlist\"\ndeny_file = \"deny.txt\"\n".into(),
            Self::ApiKey => api_key("required"),
            Self::ApiKeyOptional => api_key("optional"),
            Self::Jwt => jwt("required"),
            Self::JwtOptional => jwt("optional"),
            Self::RateLimitPerIp => format!(
                "[[layer]]\nkind = \"rate-limit\"\n[[layer.quota]]\nname = \"per-ip\"\n{quota}\nkey = [\"client-ip\"]\n"
            ),
            Self::RateLimitPerCaller => format!(
                "[[layer]]\nkind = \"rate-limit\"\n[[layer.quota]]\nname = \"per-caller\"\n{quota}\nkey = [\"principal\"]\nwhen_key_missing = \"skip\"\n"
            ),
            Self::RoleRouter => "[[layer]]\nkind = \"role-router\"\npolicy = \"policy-100.toml\"\n".into(),
            Self::RoleRouterPublic => {
                "[[layer]]\nkind = \"role-router\"\npolicy = \"policy-100-public.toml\"\n".into()
            }
        }
    }
}

/// The stack the issue-22 goal names: audit to hash-chained files, ip-allowlist over
/// 10,000 networks, an API key or an RS256 JWT, role-router over 100 rules, rate limit
/// per credential.
pub(crate) const FULL_STACK: &[Layer] = &[
    Layer::Audit,
    Layer::IpAllowlist,
    Layer::ApiKeyOptional,
    Layer::JwtOptional,
    Layer::RoleRouter,
    Layer::RateLimitPerCaller,
];

/// A configuration with `layers` in this order (outermost first) and nothing else, for
/// the hello server. Returns its path.
pub(crate) fn write_stack(dir: &Path, name: &str, layers: &[Layer]) -> Result<PathBuf, String> {
    write_stack_with_route(dir, name, layers, None)
}

/// [`write_stack`], forwarding every path to `upstream` (`[[route]] path = "/"`) when
/// given one.
pub(crate) fn write_stack_with_route(
    dir: &Path,
    name: &str,
    layers: &[Layer],
    upstream: Option<std::net::SocketAddr>,
) -> Result<PathBuf, String> {
    let mut text = String::from(
        "# Written by portcullis-load for one run; see benches/README.md.\n[server]\nlisten = \"127.0.0.1:0\"\n",
    );
    for layer in layers {
        text.push('\n');
        text.push_str(&layer.table(name));
    }
    if let Some(upstream) = upstream {
        text.push_str(&format!(
            "\n[[route]]\npath = \"/\"\nupstream = \"http://{upstream}\"\n"
        ));
    }
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, text).map_err(|e| format!("writing {}: {e}", config.display()))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files a run writes are a configuration the gateway accepts, with every
    /// layer the run means to measure, and the credentials are what the stack
    /// expects them to be.
    #[tokio::test]
    async fn the_run_files_build_the_intended_stack() {
        let dir = std::env::temp_dir().join(format!("portcullis-load-{}", std::process::id()));
        let credentials = write_common(&dir, 3).unwrap();
        assert_eq!(credentials.api_keys.len(), 3);
        assert_eq!(credentials.tokens.len(), 3);
        assert!(!format!("{credentials:?}").contains(&credentials.api_keys[0]));
        let path = write_gateway(&dir, "soak").unwrap();
        let config = portcullis::config::GatewayConfig::from_file(&path).unwrap();
        assert_eq!(
            config.layer_kinds(),
            [
                "audit",
                "ip-allowlist",
                "rate-limit",
                "api-key",
                "jwt",
                "rate-limit",
                "role-router",
            ]
        );
        config.build().await.unwrap();
        assert_eq!(credentials.rs256_tokens.len(), 3);
        let every_layer = [
            Layer::Audit,
            Layer::IpAllowlist,
            Layer::ApiKey,
            Layer::Jwt,
            Layer::RateLimitPerIp,
            Layer::RateLimitPerCaller,
            Layer::RoleRouter,
            Layer::RoleRouterPublic,
        ];
        for (index, layers) in every_layer
            .iter()
            .map(std::slice::from_ref)
            .chain([FULL_STACK])
            .enumerate()
        {
            let path = write_stack(&dir, &format!("stack-{index}"), layers).unwrap();
            let config = portcullis::config::GatewayConfig::from_file(&path)
                .unwrap_or_else(|e| panic!("{layers:?}: {e}"));
            assert_eq!(config.layer_kinds().len(), layers.len());
            config
                .build()
                .await
                .unwrap_or_else(|e| panic!("{layers:?}: {e}"));
        }
        let upstream = "127.0.0.1:9".parse().unwrap();
        let path = write_stack_with_route(&dir, "proxied", FULL_STACK, Some(upstream)).unwrap();
        let gateway = portcullis::config::GatewayConfig::from_file(&path)
            .unwrap()
            .build()
            .await
            .unwrap();
        assert!(gateway.has_routes());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
