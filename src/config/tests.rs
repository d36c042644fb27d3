//! The file's checks: unknown keys, bad values and unknown kinds are errors that name
//! the line and the key; the example file is valid and keeps its order.

use std::path::Path;

use super::{ConfigError, Gateway, GatewayConfig};

fn parse(text: &str) -> Result<GatewayConfig, ConfigError> {
    GatewayConfig::parse("gateway.toml", text, Path::new("."))
}

fn error(text: &str) -> ConfigError {
    parse(text).expect_err("the file should be refused")
}

const SERVER: &str = "[server]\nlisten = \"127.0.0.1:8443\"\n";

#[test]
fn the_example_file_is_valid_and_ordered() {
    let config = parse(include_str!("../../examples/gateway.toml")).unwrap();
    assert_eq!(
        config.layer_kinds(),
        [
            "audit",
            "ip-allowlist",
            "rate-limit",
            "mtls-identity",
            "api-key",
            "jwt",
            "rate-limit",
            "role-router"
        ]
    );
}

#[test]
fn an_unknown_key_names_its_line_and_path() {
    let e = error(&format!(
        "{SERVER}\n[client_ip]\ntrusted_proxy = [\"10.0.0.0/8\"]\n"
    ));
    assert_eq!(e.line, Some(5), "{e}");
    assert!(e.message.contains("unknown field `trusted_proxy`"), "{e}");
    assert!(
        e.message.contains("trusted_proxies"),
        "{e}: should offer the right key"
    );

    let e = error("[server]\nlisten = \"127.0.0.1:8443\"\nport = 1\n");
    assert_eq!(e.line, Some(3), "{e}");
}

#[test]
fn a_bad_value_names_its_line_and_key() {
    let e = error(&format!("{SERVER}[server2]\n"));
    assert!(e.message.contains("server2"), "{e}");

    let e = error("[server]\nlisten = \"localhost\"\n");
    assert_eq!((e.line, e.key.as_str()), (Some(2), "server.listen"), "{e}");

    let e = error(&format!(
        "{SERVER}[client_ip]\ntrusted_proxies = [\"10.0.0.1/8\"]\n"
    ));
    assert_eq!(
        (e.line, e.key.as_str()),
        (Some(4), "client_ip.trusted_proxies"),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with("gateway.toml:4: client_ip.trusted_proxies: "),
        "{e}"
    );
}

#[test]
fn layer_errors_name_the_layer_entry_and_the_key_inside_it() {
    let text = format!(
        "{SERVER}\n[[layer]]\nkind = \"audit\"\n\n[[layer]]\nkind = \"rate-limit\"\n[[layer.quota]]\nname = \"per-ip\"\nrate = \"10 per fortnight\"\n"
    );
    let e = error(&text);
    assert_eq!(e.key, "layer[1].quota[0].rate", "{e}");
    assert_eq!(e.line, Some(11), "{e}: the key's own line");

    let e = error(&format!(
        "{SERVER}[[layer]]\nkind = \"api-key\"\nkey_file = \"k\"\nheader = [\"x\"]\n"
    ));
    assert_eq!(e.key, "layer[0].header", "{e}");
    assert!(
        e.message
            .contains("unknown field `header`, expected one of"),
        "{e}"
    );

    let e = error(&format!("{SERVER}[[layer]]\nkind = \"firewall\"\n"));
    assert_eq!(e.key, "layer[0].kind", "{e}");
    assert!(e.message.contains("ip-allowlist"), "{e}: lists the kinds");

    let e = error(&format!("{SERVER}[[layer]]\ndeny = []\n"));
    assert_eq!(e.key, "layer[0].kind", "{e}");

    let e = error(&format!(
        "{SERVER}[[layer]]\nkind = \"jwt\"\nmode = \"sometimes\"\n"
    ));
    assert_eq!(e.key, "layer[0].mode", "{e}");
}

#[test]
fn broken_toml_names_the_line() {
    let e = error("[server]\nlisten = \"127.0.0.1:8443\n");
    assert_eq!(e.line, Some(2), "{e}");
}

#[tokio::test]
async fn files_the_layers_name_must_exist() {
    let config = parse(&format!(
        "{SERVER}[[layer]]\nkind = \"role-router\"\npolicy = \"/nonexistent/policy.toml\"\n"
    ))
    .unwrap();
    let e = config.build().await.unwrap_err();
    assert!(e.key.starts_with("layer[0]"), "{e}");
    assert!(e.to_string().contains("/nonexistent/policy.toml"), "{e}");

    let config = parse(&format!(
        "{SERVER}[[layer]]\nkind = \"jwt\"\ntrust_token_issuer = true\n"
    ))
    .unwrap();
    let e = config.build().await.unwrap_err();
    assert_eq!(
        (e.key.as_str(), e.line),
        ("layer[0].trust_token_issuer", Some(3)),
        "{e}"
    );
}

#[cfg(feature = "dev-pki")]
#[tokio::test]
async fn tls_without_client_certificates_refuses_what_it_would_not_use() {
    let dir = std::env::temp_dir().join(format!("portcullis-config-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pki = portcullis_mtls_identity::DevPki::generate(&["localhost"]).unwrap();
    pki.write_to(&dir).unwrap();
    let build = |text: String| {
        let dir = dir.clone();
        async move {
            GatewayConfig::parse("test.toml", &text, &dir)
                .unwrap()
                .build()
                .await
        }
    };
    let tls = "[tls]\ncert = \"server.pem\"\nkey = \"server.key\"\n";

    // Off: plain server-side TLS, no client CA needed.
    let gateway = build(format!("{SERVER}{tls}client_certs = \"off\"\n"))
        .await
        .unwrap();
    assert!(gateway.tls.is_some());

    // Off with a client CA, or CRLs, would silently not check them.
    let e = build(format!(
        "{SERVER}{tls}client_certs = \"off\"\nclient_ca = \"ca.pem\"\n"
    ))
    .await
    .unwrap_err();
    assert_eq!(e.key, "tls.client_ca", "{e}");
    let e = build(format!(
        "{SERVER}{tls}client_certs = \"off\"\ncrls = [\"ca.crl\"]\n"
    ))
    .await
    .unwrap_err();
    assert_eq!(e.key, "tls.crls", "{e}");

    // Asking for certificates needs the CA they chain to.
    let e = build(format!("{SERVER}{tls}client_certs = \"required\"\n"))
        .await
        .unwrap_err();
    assert_eq!(e.key, "tls.client_ca", "{e}");
    assert!(e.message.contains("off"), "{e}: says how to go without");

    // An mtls-identity layer behind TLS that never asks for a certificate.
    std::fs::write(dir.join("connectors.toml"), "").unwrap();
    let e = build(format!(
        "{SERVER}{tls}client_certs = \"off\"\n[[layer]]\nkind = \"mtls-identity\"\nconnectors = \"connectors.toml\"\n"
    ))
    .await
    .unwrap_err();
    assert_eq!(e.key, "layer[0]", "{e}");
    assert!(e.message.contains("client_certs"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_role_table_may_be_inline() {
    let inline = format!(
        "{SERVER}[[layer]]\nkind = \"role-router\"\ndefault = \"deny\"\n\
         [[layer.rule]]\npath = \"/health\"\npublic = true\n\
         [[layer.rule]]\npath = \"/v1/key/**\"\nroles_any = [\"key-admin\"]\n"
    );
    let gateway = parse(&inline).unwrap().build().await.unwrap();
    assert_eq!(gateway.layer_kinds(), ["role-router"]);

    // A bad rule is named by its index, at its bad key's line, when the file is read.
    let e = error(&format!(
        "{SERVER}[[layer]]\nkind = \"role-router\"\n\
         [[layer.rule]]\npath = \"/health\"\npublic = true\n\
         [[layer.rule]]\npath = \"/v1/key/**\"\nroles_anyy = [\"key-admin\"]\n"
    ));
    assert_eq!(
        (e.key.as_str(), e.line),
        ("layer[0].rule[1]", Some(10)),
        "{e}"
    );
    assert!(e.message.contains("roles_anyy"), "{e}");

    let e = error(&format!(
        "{SERVER}[[layer]]\nkind = \"role-router\"\npolicy = \"p.toml\"\n[[layer.rule]]\npath = \"/\"\npublic = true\n"
    ));
    assert_eq!(e.key, "layer[0].rule", "{e}");
    let e = error(&format!("{SERVER}[[layer]]\nkind = \"role-router\"\n"));
    assert_eq!(e.key, "layer[0].policy", "{e}");
}

#[tokio::test]
async fn jwt_issuer_aliases_and_key_age_are_checked() {
    use base64::Engine as _;
    let dir = std::env::temp_dir().join(format!("portcullis-config-alias-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("s.secret"),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]),
    )
    .unwrap();
    let issuer = |name: &str, extra: &str| {
        format!("[[layer.issuer]]\nissuer = \"{name}\"\naudiences = [\"api\"]\nsecret_file = \"s.secret\"\n{extra}")
    };
    let layer = |issuers: String| format!("{SERVER}[[layer]]\nkind = \"jwt\"\n{issuers}");
    let build = |text: String| {
        let dir = dir.clone();
        async move { build_in(&dir, &text).await }
    };
    let same =
        layer(issuer("https://a", "alias = \"x\"\n") + &issuer("https://b", "alias = \"x\"\n"));
    let e = build(same).await.unwrap_err();
    assert!(e.to_string().contains("unique"), "{e}");
    let bad = layer(issuer("https://a", "alias = \"a#b\"\n") + &issuer("https://b", ""));
    let e = build(bad).await.unwrap_err();
    assert!(e.to_string().contains("alias"), "{e}");
    let both = layer(issuer(
        "https://a",
        "max_key_age = \"1h\"\ntrust_stale_keys_indefinitely = true\n",
    ));
    let e = build(both).await.unwrap_err();
    assert!(e.to_string().contains("max_key_age"), "{e}");
    let good = layer(
        issuer("https://a", "alias = \"a\"\nmax_key_age = \"1h\"\n") + &issuer("https://b", ""),
    );
    assert!(build(good).await.is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn trusting_every_address_is_refused_and_numbers_are_checked() {
    for everything in [
        "\"0.0.0.0/0\"",
        "\"::/0\"",
        "\"0.0.0.0/1\", \"128.0.0.0/1\"",
    ] {
        let e = error(&format!(
            "{SERVER}[client_ip]\ntrusted_proxies = [{everything}]\n"
        ));
        assert_eq!(
            (e.key.as_str(), e.line),
            ("client_ip.trusted_proxies", Some(4)),
            "{e}"
        );
        assert!(e.message.contains("insecure_trust_every_peer"), "{e}");
    }
    let e = error(&format!(
        "{SERVER}[client_ip]\ntrusted_proxies = [\"010.0.0.0/8\"]\n"
    ));
    assert_eq!(e.key, "client_ip.trusted_proxies", "{e}");
    let e = error(&format!(
        "{SERVER}[client_ip]\nmax_forwarded_elements = 0\n"
    ));
    assert_eq!(e.key, "client_ip.max_forwarded_elements", "{e}");
    assert!(parse(&format!(
        "{SERVER}[client_ip]\ninsecure_trust_every_peer = true\nmax_forwarded_elements = 8\n"
    ))
    .is_ok());
}

#[tokio::test]
async fn durations_and_lengths_are_checked_where_they_are_written() {
    use base64::Engine as _;
    use tower::ServiceExt as _;
    // Token times are whole seconds, at least one.
    for lifetime in ["\"0s\"", "\"500ms\"", "\"1s 500ms\""] {
        let e = error(&format!(
            "{SERVER}[token_issuer]\nissuer = \"i\"\naudience = \"a\"\nsecret_file = \"s\"\nlifetime = {lifetime}\n"
        ));
        assert_eq!(
            (e.key.as_str(), e.line),
            ("token_issuer.lifetime", Some(7)),
            "{e}"
        );
        assert!(e.message.contains("whole number of seconds"), "{e}");
    }
    // A session shorter than one token could never be extended.
    let dir = std::env::temp_dir().join(format!("portcullis-config-times-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("s.secret"),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]),
    )
    .unwrap();
    let issuer = |times: &str| {
        format!("{SERVER}[token_issuer]\nissuer = \"i\"\naudience = \"a\"\nsecret_file = \"s.secret\"\n{times}")
    };
    let build = |text: String| {
        let dir = dir.clone();
        async move { build_in(&dir, &text).await }
    };
    let e = build(issuer("max_session = \"1h\"\n")).await.unwrap_err();
    assert_eq!(e.key, "token_issuer.max_session", "{e}");
    assert!(e.message.contains("10h"), "{e}");
    let e = build(issuer("lifetime = \"2h\"\nmax_session = \"1h\"\n"))
        .await
        .unwrap_err();
    assert_eq!(e.key, "token_issuer.max_session", "{e}");
    assert!(build(issuer("lifetime = \"1h\"\nmax_session = \"8h\"\n"))
        .await
        .is_ok());
    std::fs::remove_dir_all(&dir).unwrap();

    // The role router's path limit: a positive number of bytes, applied.
    let router = |extra: &str| {
        format!(
            "{SERVER}[[layer]]\nkind = \"role-router\"\n{extra}default = \"public\"\n\
             [[layer.rule]]\npath = \"/health\"\npublic = true\n"
        )
    };
    for bad in [
        "max_path_len = 0\n",
        "max_path_len = -5\n",
        "max_path_len = \"8k\"\n",
    ] {
        let e = error(&router(bad));
        assert_eq!(e.key, "layer[0].max_path_len", "{bad}: {e}");
    }
    let gateway = parse(&router("max_path_len = 16\n"))
        .unwrap()
        .build()
        .await
        .unwrap();
    let app = gateway.apply(axum::Router::new().fallback(|| async { "ok" }));
    let status = |path: &str| {
        let app = app.clone();
        let request = http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        async move { app.oneshot(request).await.unwrap().status() }
    };
    assert_eq!(status("/health").await, http::StatusCode::OK);
    assert_eq!(
        status("/a-path-longer-than-16").await,
        http::StatusCode::URI_TOO_LONG
    );

    // The stale-CRL policy is one of two names.
    let tls = "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
    let e = error(&format!("{SERVER}{tls}stale_crls = \"ignore\"\n"));
    assert_eq!(e.key, "tls.stale_crls", "{e}");
    assert!(e.message.contains("accept-with-warning"), "{e}");
    assert!(parse(&format!(
        "{SERVER}{tls}stale_crls = \"accept-with-warning\"\n"
    ))
    .is_ok());
}

/// Every role table the project ships lints clean: a shipped policy with a rule that can
/// never match fails here (and so in CI), as `portcullis policy check` would warn.
#[test]
fn every_shipped_policy_lints_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for dir in ["examples", "tests/policies"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if path.extension().is_none_or(|e| e != "toml") || !text.contains("[[rule]]") {
                continue;
            }
            let policy = portcullis_role_router::read_policy(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let shadowed: Vec<String> = policy
                .lint()
                .iter()
                .map(|s| {
                    format!(
                        "{:?} is covered by {:?}",
                        policy.rule_name(s.rule),
                        policy.rule_name(s.by)
                    )
                })
                .collect();
            assert!(shadowed.is_empty(), "{}: {shadowed:?}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} policies found");
}

#[tokio::test]
async fn the_server_limits_are_read_and_checked() {
    let config = parse(&format!(
        "{SERVER}idle_timeout = \"5s\"\ntls_handshake_timeout = \"3s\"\nmax_connections_per_address = 20\nh2_max_concurrent_streams = 50\nshutdown_grace = \"0s\"\nmax_body_bytes = 1024\n[[server.body_limit]]\npath = \"/v1/upload/**\"\nmax_bytes = 1048576\n"
    ))
    .unwrap();
    let gateway = config.build().await.unwrap();
    let limits = format!("{:?}", gateway.serve_limits);
    for expected in [
        "idle_timeout: 5s",
        "max_connections_per_address: Some(20)",
        "h2_max_concurrent_streams: 50",
        "shutdown_grace: 0ns",
    ] {
        assert!(limits.contains(expected), "{limits}");
    }
    assert_eq!(
        gateway.tls_handshake_timeout,
        Some(std::time::Duration::from_secs(3))
    );
    assert!(gateway.body_limits.is_some());
    // Without body limits in the file, nothing is added around the router.
    let plain = parse(SERVER).unwrap().build().await.unwrap();
    assert!(plain.body_limits.is_none());

    for (text, key, line) in [
        ("idle_timeout = \"0s\"\n", "server.idle_timeout", 3),
        (
            "tls_handshake_timeout = \"0s\"\n",
            "server.tls_handshake_timeout",
            3,
        ),
        (
            "max_connections_per_address = 0\n",
            "server.max_connections_per_address",
            3,
        ),
        (
            "h2_max_concurrent_streams = 0\n",
            "server.h2_max_concurrent_streams",
            3,
        ),
        ("shutdown_grace = \"soon\"\n", "server.shutdown_grace", 3),
        ("max_body_bytes = -1\n", "server.max_body_bytes", 3),
        (
            "[[server.body_limit]]\npath = \"/a\"\n",
            "server.body_limit",
            3,
        ),
        (
            "[[server.body_limit]]\npath = \"/a\"\nmax_bytes = 1\nmax = 2\n",
            "server.body_limit",
            3,
        ),
        (
            "proxy_protocol = { trusted = [] }\n",
            "server.proxy_protocol.trusted",
            3,
        ),
        (
            "proxy_protocol = { trusted = [\"0.0.0.0/0\"] }\n",
            "server.proxy_protocol.trusted",
            3,
        ),
        (
            "proxy_protocol = { trusted = [\"10.0.0.0/33\"] }\n",
            "server.proxy_protocol.trusted",
            3,
        ),
        (
            "proxy_protocol = { trusted = [\"10.0.0.0/8\"], header_timeout = \"0s\" }\n",
            "server.proxy_protocol.header_timeout",
            3,
        ),
        (
            "proxy_protocol = { trusted = [\"10.0.0.0/8\"], requried = true }\n",
            "server.proxy_protocol",
            3,
        ),
        (
            "proxy_protocol = { required = false }\n",
            "server.proxy_protocol",
            3,
        ),
    ] {
        let e = error(&format!("{SERVER}{text}"));
        assert!(e.key.starts_with(key), "{text}: {e}");
        assert!(e.line.is_some_and(|l| l >= line), "{text}: {e}");
    }
    // A header size outside the protocol's.
    for bytes in [8, 70_000] {
        let e = parse(&format!(
            "{SERVER}proxy_protocol = {{ trusted = [\"10.0.0.0/8\"], max_header_bytes = {bytes} }}\n"
        ))
        .unwrap()
        .build()
        .await
        .unwrap_err();
        assert_eq!(e.key, "server.proxy_protocol.max_header_bytes", "{e}");
    }
    let built = parse(&format!(
        "{SERVER}proxy_protocol = {{ trusted = [\"10.0.0.0/8\"], required = false, max_header_bytes = 512 }}\n"
    ))
    .unwrap()
    .build()
    .await
    .unwrap();
    let proxy = built.proxy_protocol.as_ref().unwrap();
    assert!(proxy.trusted().contains("10.1.2.3".parse().unwrap()));
    // A pattern that does not compile names its entry.
    let e = parse(&format!(
        "{SERVER}[[server.body_limit]]\npath = \"no-slash\"\nmax_bytes = 10\n"
    ))
    .unwrap()
    .build()
    .await
    .unwrap_err();
    assert_eq!(e.key, "server.body_limit[0].path", "{e}");
    assert!(e.message.contains("starts with '/'"), "{e}");
}

/// An error inside a `[[layer]]` names the line of its own key, not of the table.
#[test]
fn layer_errors_name_the_keys_own_line() {
    let text = format!(
        "{SERVER}\n[[layer]]\nkind = \"rate-limit\"\n\n[[layer.quota]]\nname = \"per-ip\"\nburst = 5\n\nrate = \"ten a second\"\n\n[[layer]]\nkind = \"audit\"\nstdout = true\n# a comment\nstdot = true\n"
    );
    // Line 11: the rate of the first layer's quota, three lines below its table.
    let e = error(&text);
    assert_eq!(
        (e.line, e.key.as_str()),
        (Some(11), "layer[0].quota[0].rate"),
        "{e}"
    );
    // A typo in the second layer: the typo's own line.
    let fixed = text.replace("\"ten a second\"", "\"10/s\"");
    let e = error(&fixed);
    assert_eq!(e.line, Some(17), "{e}");
    assert!(e.message.contains("stdot"), "{e}");
    // A missing key: the layer's line.
    let e = error(&format!("{SERVER}\n\n[[layer]]\nstdout = true\n"));
    assert_eq!((e.line, e.key.as_str()), (Some(5), "layer[0].kind"), "{e}");
}

#[tokio::test]
async fn the_metrics_section_needs_a_place_to_serve() {
    let with_listen = parse(&format!("{SERVER}[metrics]\nlisten = \"127.0.0.1:0\"\n"))
        .unwrap()
        .build()
        .await
        .unwrap();
    assert_eq!(
        with_listen.metrics,
        Some(Some("127.0.0.1:0".parse().unwrap()))
    );
    assert!(parse(SERVER)
        .unwrap()
        .build()
        .await
        .unwrap()
        .metrics
        .is_none());

    let e = parse(&format!("{SERVER}[metrics]\n"))
        .unwrap()
        .build()
        .await
        .unwrap_err();
    assert_eq!(e.key, "metrics", "{e}");
    assert!(e.message.contains("needs listen"), "{e}");
    let e = parse(&format!("{SERVER}[metrics]\nlisten = \"0.0.0.0:9090\"\n"))
        .unwrap()
        .build()
        .await
        .unwrap_err();
    assert_eq!(e.key, "metrics.listen", "{e}");
    let remote = parse(&format!(
        "{SERVER}[metrics]\nlisten = \"0.0.0.0:9090\"\nallow_remote = true\n"
    ))
    .unwrap()
    .build()
    .await
    .unwrap();
    assert!(remote.metrics.is_some());
    let e = error(&format!(
        "{SERVER}[metrics]\nlisten = \"127.0.0.1:0\"\nport = 1\n"
    ));
    assert_eq!(e.line, Some(5), "{e}");
}

/// Reads `text` as a file in `dir` and builds it.
async fn build_in(dir: &Path, text: &str) -> Result<Gateway, ConfigError> {
    GatewayConfig::parse("gateway.toml", text, dir)
        .unwrap()
        .build()
        .await
}

/// Builds `text` and answers requests through `Gateway::apply` with a fallback handler;
/// each request comes from `peer`, as the serve loop hands it over.
async fn stack(text: &str) -> axum::Router {
    let gateway = parse(text).unwrap().build().await.unwrap();
    let app = gateway.apply(axum::Router::new().fallback(|| async { "ok" }));
    std::mem::forget(gateway);
    app
}

async fn call(
    app: &axum::Router,
    path: &str,
    headers: &[(&str, &str)],
) -> http::Response<axum::body::Body> {
    use tower::ServiceExt as _;
    let mut request = http::Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(axum::body::Body::empty()).unwrap();
    request
        .extensions_mut()
        .insert(portcullis_core::PeerAddr("192.0.2.7:5000".parse().unwrap()));
    app.clone().oneshot(request).await.unwrap()
}

/// Each rate-limit key of the file changes what the built stack does.
#[tokio::test]
async fn every_rate_limit_key_reaches_the_stack() {
    let quota = |keys: &str| {
        format!("{SERVER}[[layer]]\nkind = \"rate-limit\"\nsweep_every = \"30s\"\n[[layer.quota]]\nname = \"q\"\n{keys}")
    };
    // semantics = "strict-window": 3 per minute, then 429 until the window ends.
    let app = stack(&quota("rate = \"3/m\"\nsemantics = \"strict-window\"\n")).await;
    for _ in 0..3 {
        assert_eq!(call(&app, "/", &[]).await.status(), 200);
    }
    let refused = call(&app, "/", &[]).await;
    assert_eq!(refused.status(), 429);
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");

    // charge = "never": counted against, never refused.
    let app = stack(&quota("rate = \"1/m\"\ncharge = \"never\"\n")).await;
    for _ in 0..3 {
        assert_eq!(call(&app, "/", &[]).await.status(), 200);
    }

    // mode = "dry-run": over the quota and let through; with dry_run_headers, the
    // line it would have refused by is sent.
    let app = stack(&quota("rate = \"1/m\"\nmode = \"dry-run\"\n")).await;
    for _ in 0..3 {
        let response = call(&app, "/", &[]).await;
        assert_eq!(response.status(), 200);
        assert!(response.headers().get("ratelimit").is_none());
    }
    let app = stack(&quota("rate = \"1/m\"\nmode = \"dry-run\"\n").replace(
        "sweep_every = \"30s\"\n",
        "sweep_every = \"30s\"\ndry_run_headers = true\n",
    ))
    .await;
    call(&app, "/", &[]).await;
    let over = call(&app, "/", &[]).await;
    assert_eq!(over.status(), 200);
    assert!(over.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .contains("r=0"));

    // key = ["header:x-tenant"]: each tenant its own bucket.
    let app = stack(&quota("rate = \"1/m\"\nkey = [\"header:x-tenant\"]\n")).await;
    assert_eq!(call(&app, "/", &[("x-tenant", "a")]).await.status(), 200);
    assert_eq!(call(&app, "/", &[("x-tenant", "a")]).await.status(), 429);
    assert_eq!(call(&app, "/", &[("x-tenant", "b")]).await.status(), 200);

    // max_tracked_keys with on_key_overflow = "refuse": a third tenant is refused.
    let app = stack(&quota(
        "rate = \"10/m\"\nkey = [\"header:x-tenant\"]\nmax_tracked_keys = 2\non_key_overflow = \"refuse\"\n",
    ))
    .await;
    assert_eq!(call(&app, "/", &[("x-tenant", "a")]).await.status(), 200);
    assert_eq!(call(&app, "/", &[("x-tenant", "b")]).await.status(), 200);
    assert_eq!(call(&app, "/", &[("x-tenant", "c")]).await.status(), 429);

    // A ban answered 429 instead of 403.
    let app = stack(&quota(
        "rate = \"1/h\"\n[layer.quota.ban]\nstrikes = 1\nwindow = \"1m\"\nduration = \"1h\"\nstatus = \"429\"\n",
    ))
    .await;
    assert_eq!(call(&app, "/", &[]).await.status(), 200);
    let mut last = call(&app, "/", &[]).await;
    for _ in 0..2 {
        last = call(&app, "/", &[]).await;
    }
    assert_eq!(last.status(), 429);
    let body = axum::body::to_bytes(last.into_body(), 10_000)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("banned"),
        "{body:?}"
    );

    // Refused keys, each at its own line.
    for (keys, key) in [
        (
            "rate = \"1/s\"\nkey = [\"header:bad header\"]\n",
            "layer[0].quota[0].key[0]",
        ),
        (
            "rate = \"1/s\"\nkey = [\"cookie\"]\n",
            "layer[0].quota[0].key[0]",
        ),
        (
            "rate = \"1/s\"\nsemantics = \"fixed\"\n",
            "layer[0].quota[0].semantics",
        ),
        (
            "rate = \"1/s\"\non_key_overflow = \"drop\"\n",
            "layer[0].quota[0].on_key_overflow",
        ),
        (
            "rate = \"1/s\"\ncharge = \"sometimes\"\n",
            "layer[0].quota[0].charge",
        ),
        (
            "rate = \"1/s\"\nmode = \"shadow\"\n",
            "layer[0].quota[0].mode",
        ),
    ] {
        let e = error(&quota(keys));
        assert_eq!(e.key, key, "{keys}: {e}");
        assert_eq!(e.line, Some(9), "{keys}: {e}");
    }
    // Redis settings without Redis say what is missing.
    let e = parse(&format!(
        "{SERVER}[[layer]]\nkind = \"rate-limit\"\nredis_timeout = \"1s\"\n[[layer.quota]]\nname = \"q\"\nrate = \"1/s\"\n"
    ))
    .unwrap()
    .build()
    .await
    .unwrap_err();
    assert!(e.message.contains("need redis"), "{e}");
    let e = parse(&format!(
        "{SERVER}[[layer]]\nkind = \"rate-limit\"\nredis_instances = 3\n[[layer.quota]]\nname = \"q\"\nrate = \"1/s\"\n"
    ))
    .unwrap()
    .build()
    .await
    .unwrap_err();
    assert!(e.message.contains("need redis"), "{e}");
    assert!(error(&format!(
        "{SERVER}[[layer]]\nkind = \"rate-limit\"\nredis = \"redis://127.0.0.1:1/\"\nredis_instances = 0\n[[layer.quota]]\nname = \"q\"\nrate = \"1/s\"\n"
    ))
    .key
    .ends_with("redis_instances"));
    // Leases: a TTL of 0 turns them off; a lease holds at most 1000 permits.
    let e = parse(&format!(
        "{SERVER}[[layer]]\nkind = \"rate-limit\"\nredis_lease_ttl = \"0s\"\n[[layer.quota]]\nname = \"q\"\nrate = \"1/s\"\nexact = true\n"
    ))
    .unwrap()
    .build()
    .await
    .unwrap_err();
    assert!(e.message.contains("need redis"), "{e}");
    let e = parse(&format!(
        "{SERVER}[[layer]]\nkind = \"rate-limit\"\nredis = \"redis://127.0.0.1:1/\"\nredis_max_lease = 5000\n[[layer.quota]]\nname = \"q\"\nrate = \"1/s\"\n"
    ))
    .unwrap()
    .build()
    .await
    .unwrap_err();
    assert!(e.message.contains("at most 1000 permits"), "{e}");
    assert!(error(&format!(
        "{SERVER}[[layer]]\nkind = \"rate-limit\"\nredis = \"redis://127.0.0.1:1/\"\nredis_max_lease = 0\n[[layer.quota]]\nname = \"q\"\nrate = \"1/s\"\n"
    ))
    .key
    .ends_with("redis_max_lease"));
    assert!(error(&format!(
        "{SERVER}[[layer]]\nkind = \"rate-limit\"\n[[layer.quota]]\nname = \"q\"\nrate = \"1/s\"\nexact = \"yes\"\n"
    ))
    .key
    .ends_with("exact"));
}

/// role-router `shadow = true` lets through what it would refuse; the audit layer's
/// `log_query` writes the (redacted) query.
#[tokio::test]
async fn shadow_mode_and_audit_keys_reach_the_stack() {
    let policy = "default = \"deny\"\n[[layer.rule]]\npath = \"/open\"\npublic = true\n";
    let enforcing = stack(&format!(
        "{SERVER}[[layer]]\nkind = \"role-router\"\n{policy}"
    ))
    .await;
    assert_eq!(call(&enforcing, "/closed", &[]).await.status(), 403);
    let shadow = stack(&format!(
        "{SERVER}[[layer]]\nkind = \"role-router\"\nshadow = true\n{policy}"
    ))
    .await;
    assert_eq!(call(&shadow, "/closed", &[]).await.status(), 200);
    assert!(error(&format!(
        "{SERVER}[[layer]]\nkind = \"role-router\"\nshadow = \"yes\"\n{policy}"
    ))
    .key
    .ends_with("shadow"));

    let dir = std::env::temp_dir().join(format!("portcullis-config-audit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        "{SERVER}[[layer]]\nkind = \"audit\"\ndirectory = \"audit\"\nlog_query = true\noverflow = \"drop\"\ncapacity = 100\nredact_query_keys = [\"q\"]\nrequest_id_header = \"x-trace\"\n"
    );
    let gateway = build_in(&dir, &text).await.unwrap();
    let app = gateway.apply(axum::Router::new().fallback(|| async { "ok" }));
    let answer = call(
        &app,
        "/search?q=tea&api_key=s3cr3t",
        &[("x-trace", "trace-1")],
    )
    .await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-trace"], "trace-1");
    gateway.sync_audit().await.unwrap();
    let file = std::fs::read_dir(dir.join("audit"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let line = std::fs::read_to_string(file).unwrap();
    assert!(
        line.contains("\"query\":\"q=REDACTED&api_key=REDACTED\""),
        "{line}"
    );
    assert!(line.contains("\"request_id\":\"trace-1\""), "{line}");
    assert!(!line.contains("s3cr3t"), "{line}");
    assert!(error(&format!(
        "{SERVER}[[layer]]\nkind = \"audit\"\nstdout = true\noverflow = \"sometimes\"\n"
    ))
    .key
    .ends_with("overflow"));

    // level = "refusals": an allowed request leaves no event, a refused one does.
    let text = format!(
        "{SERVER}[[layer]]\nkind = \"audit\"\ndirectory = \"refusals\"\nlevel = \"refusals\"\n[[layer]]\nkind = \"role-router\"\n{policy}"
    );
    let gateway = build_in(&dir, &text).await.unwrap();
    let app = gateway.apply(axum::Router::new().fallback(|| async { "ok" }));
    assert_eq!(call(&app, "/open", &[]).await.status(), 200);
    assert_eq!(call(&app, "/closed", &[]).await.status(), 403);
    gateway.sync_audit().await.unwrap();
    let file = std::fs::read_dir(dir.join("refusals"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(file).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("\"path\":\"/closed\""), "{text}");
    let e = parse(&format!(
        "{SERVER}[[layer]]\nkind = \"audit\"\nstdout = true\nsample_allowed = 10\n"
    ))
    .unwrap()
    .build()
    .await
    .unwrap_err();
    assert!(e.message.contains("needs level"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// jwt `token_cache` and `max_token_size` reach the built layer: a verified token is
/// remembered unless the cache is off, and a token over the size is refused.
#[tokio::test]
async fn jwt_cache_and_size_keys_reach_the_stack() {
    use base64::Engine as _;
    let dir = std::env::temp_dir().join(format!("portcullis-config-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("s.secret"),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([9u8; 32]),
    )
    .unwrap();
    let build = |jwt_keys: &str| {
        let text = format!(
            "{SERVER}[token_issuer]\nissuer = \"i\"\naudience = \"a\"\nsecret_file = \"s.secret\"\n\n[[layer]]\nkind = \"jwt\"\ntrust_token_issuer = true\n{jwt_keys}"
        );
        let dir = dir.clone();
        async move { build_in(&dir, &text).await.unwrap() }
    };
    let principal =
        portcullis_core::Principal::builder("app", portcullis_core::AuthMethod::ApiKey).build();
    // Default cache: remembered; cache off: not; a 64-byte limit: refused.
    for (keys, status, cached) in [
        ("", 200, 1),
        ("token_cache = 0\n", 200, 0),
        ("max_token_size = 64\n", 401, 0),
    ] {
        let gateway = build(keys).await;
        let routes = gateway.token_routes.as_ref().unwrap();
        let token = routes.issuer.issue(&principal, None).unwrap();
        let app = gateway.apply(axum::Router::new().fallback(|| async { "ok" }));
        let bearer = format!("Bearer {}", token.expose());
        let answer = call(&app, "/", &[("authorization", &bearer)]).await;
        assert_eq!(answer.status(), status, "{keys:?}");
        let remembered = gateway.reloadable.jwt[0].cached_tokens();
        assert_eq!(remembered, cached, "{keys:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Rate-limit tiers and `attribute:NAME` keys, read from an API key file's `tier` and
/// labels; `ipv6_prefix` counting a /64 as one client.
#[tokio::test]
async fn tiers_attributes_and_ipv6_prefixes_reach_the_stack() {
    use portcullis_api_key::{render_key_record, GeneratedKey, KeyPrefix, KeyRecord};
    let dir = std::env::temp_dir().join(format!("portcullis-config-tiers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut file = String::new();
    let mut secrets = Vec::new();
    for (owner, tier, team) in [
        ("gold", Some("gold"), "red"),
        ("plain", None, "red"),
        ("other", None, "blue"),
    ] {
        let key = GeneratedKey::generate(&KeyPrefix::default()).unwrap();
        let mut record = KeyRecord::new(key.id(), owner, key.digest())
            .unwrap()
            .label("team", team);
        if let Some(tier) = tier {
            record = record.tier(tier);
        }
        file.push_str(&render_key_record(&record));
        file.push('\n');
        secrets.push(key.expose_secret().to_owned());
    }
    std::fs::write(dir.join("keys.toml"), file).unwrap();
    let build = |quota: &str| {
        let text = format!(
            "{SERVER}[[layer]]\nkind = \"api-key\"\nkey_file = \"keys.toml\"\nmode = \"optional\"\n\n[[layer]]\nkind = \"rate-limit\"\n[[layer.quota]]\nname = \"q\"\n{quota}"
        );
        let dir = dir.clone();
        async move {
            let gateway = build_in(&dir, &text).await.unwrap();
            let app = gateway.apply(axum::Router::new().fallback(|| async { "ok" }));
            std::mem::forget(gateway);
            app
        }
    };
    let with_key = |secret: &str| vec![("x-api-key", secret.to_owned())];
    let status = |app: &axum::Router, headers: Vec<(&'static str, String)>| {
        let app = app.clone();
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            call(&app, "/", &headers).await.status().as_u16()
        }
    };

    // A tier gets its own rate: gold 3 a minute, everyone else 1.
    let app = build("rate = \"1/m\"\nkey = [\"principal\"]\n[[layer.quota.tier]]\nname = \"gold\"\nrate = \"3/m\"\n").await;
    for _ in 0..3 {
        assert_eq!(status(&app, with_key(&secrets[0])).await, 200);
    }
    assert_eq!(status(&app, with_key(&secrets[0])).await, 429);
    assert_eq!(status(&app, with_key(&secrets[1])).await, 200);
    assert_eq!(status(&app, with_key(&secrets[1])).await, 429);

    // attribute:team: the red team shares one bucket, the blue team has its own.
    let app = build("rate = \"1/m\"\nkey = [\"attribute:team\"]\n").await;
    assert_eq!(status(&app, with_key(&secrets[0])).await, 200);
    assert_eq!(status(&app, with_key(&secrets[1])).await, 429);
    assert_eq!(status(&app, with_key(&secrets[2])).await, 200);
    std::fs::remove_dir_all(&dir).unwrap();

    // ipv6_prefix = 48: two addresses of one /48 are one client; 64 (the default) two.
    for (prefix, second) in [("ipv6_prefix = 48\n", 429), ("", 200)] {
        let gateway = parse(&format!(
            "{SERVER}[[layer]]\nkind = \"rate-limit\"\n[[layer.quota]]\nname = \"q\"\nrate = \"1/m\"\n{prefix}"
        ))
        .unwrap()
        .build()
        .await
        .unwrap();
        let app = gateway.apply(axum::Router::new().fallback(|| async { "ok" }));
        let from = |peer: &str| {
            use tower::ServiceExt as _;
            let mut request = http::Request::get("/")
                .body(axum::body::Body::empty())
                .unwrap();
            request
                .extensions_mut()
                .insert(portcullis_core::PeerAddr(peer.parse().unwrap()));
            app.clone().oneshot(request)
        };
        assert_eq!(from("[2001:db8:1:1::1]:5000").await.unwrap().status(), 200);
        assert_eq!(
            from("[2001:db8:1:2::1]:5000")
                .await
                .unwrap()
                .status()
                .as_u16(),
            second,
            "{prefix:?}"
        );
    }
}

/// `identify = "spiffe"` with `trust_domains`: the SPIFFE ID names the connector; other
/// trust domains and malformed IDs are refused with their own codes; the keys are
/// checked together.
#[tokio::test]
async fn spiffe_identities_from_the_file() {
    let dir = std::env::temp_dir().join(format!("portcullis-config-spiffe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("connectors.toml"),
        "[[connector]]\nid = \"spiffe://plant.example/connector-7\"\nroles = [\"reader\"]\n",
    )
    .unwrap();
    let layer = |keys: &str| {
        format!(
            "{SERVER}[[layer]]\nkind = \"mtls-identity\"\nconnectors = \"connectors.toml\"\n{keys}"
        )
    };
    let gateway = build_in(
        &dir,
        &layer("identify = \"spiffe\"\ntrust_domains = [\"plant.example\"]\n"),
    )
    .await
    .unwrap();
    let app = gateway.apply(axum::Router::new().fallback(|| async { "ok" }));
    let certificate = |uri: &str| {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(uri.try_into().unwrap()));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        bytes::Bytes::copy_from_slice(params.self_signed(&key).unwrap().der())
    };
    let send = |uri: &str| {
        use tower::ServiceExt as _;
        let mut request = http::Request::get("/")
            .body(axum::body::Body::empty())
            .unwrap();
        request.extensions_mut().insert(portcullis_core::TlsPeer {
            addr: "192.0.2.7:5000".parse().unwrap(),
            chain: Some(std::sync::Arc::from(vec![certificate(uri)])),
        });
        app.clone().oneshot(request)
    };
    let code = |response: http::Response<axum::body::Body>| async move {
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["code"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let ok = send("spiffe://plant.example/connector-7").await.unwrap();
    assert_eq!(ok.status(), 200);
    let foreign = send("spiffe://evil.example/connector-7").await.unwrap();
    assert_eq!(foreign.status(), 401);
    assert_eq!(code(foreign).await, "foreign_trust_domain");
    let malformed = send("spiffe://Plant.example/connector-7").await.unwrap();
    assert_eq!(malformed.status(), 401);
    assert_eq!(code(malformed).await, "invalid_spiffe_id");

    for (keys, says) in [
        ("identify = \"spiffe\"\n", "trust_domains = ["),
        (
            "identify = \"spiffe\"\ntrust_domains = []\n",
            "trust_domains = [",
        ),
        (
            "identify = \"spiffe\"\ntrust_domains = [\"spiffe://plant.example\"]\n",
            "lowercase letters",
        ),
        (
            "identify = \"spiffe\"\ntrust_domains = [\"Plant.example\"]\n",
            "lowercase letters",
        ),
        (
            "identify = \"uri\"\ntrust_domains = [\"plant.example\"]\n",
            "only with",
        ),
        ("trust_domains = [\"plant.example\"]\n", "only with"),
    ] {
        let e = build_in(&dir, &layer(keys)).await.unwrap_err();
        assert_eq!(e.key, "layer[0]", "{keys}: {e}");
        assert!(e.message.contains(says), "{keys}: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `kind = "ext-authz"` against a real decision service: every key reaches the layer.
#[tokio::test]
async fn ext_authz_entries_reach_the_stack() {
    use axum::routing::post;
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = asked.clone();
    let decisions = axum::Router::new().route(
        "/check",
        post(move |body: String| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                let input: serde_json::Value = serde_json::from_str(&body).unwrap();
                match input["headers"]["x-token"][0].as_str() {
                    Some("good") => (
                        http::StatusCode::OK,
                        [("x-user", "u-1"), ("x-roles", "reader")],
                    ),
                    _ => (
                        http::StatusCode::UNAUTHORIZED,
                        [("www-authenticate", "Token"), ("x-ignored", "1")],
                    ),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, decisions).await });
    let text = format!(
        "{SERVER}[[layer]]\nkind = \"ext-authz\"\nurl = \"http://{service}/check\"\ntimeout = \"300ms\"\nforward_headers = [\"x-token\"]\nupstream_headers = [\"x-user\"]\nprincipal_header = \"x-user\"\nroles_header = \"x-roles\"\n[layer.cache]\nttl = \"1m\"\nmax_entries = 100\nkey = [\"header:x-token\"]\n"
    );
    let gateway = parse(&text).unwrap().build().await.unwrap();
    let app = gateway.apply(axum::Router::new().fallback(
        |request: axum::extract::Request| async move {
            let auth = portcullis_core::Authentication::from_extensions(request.extensions());
            let principal = auth.get(portcullis_core::AuthMethod::External).unwrap();
            format!(
                "{} {} {}",
                request.headers()["x-user"].to_str().unwrap(),
                principal.id(),
                principal.roles().join(",")
            )
        },
    ));
    std::mem::forget(gateway);
    for _ in 0..3 {
        let allowed = call(&app, "/", &[("x-token", "good"), ("x-user", "spoofed")]).await;
        assert_eq!(allowed.status(), 200);
        let body = axum::body::to_bytes(allowed.into_body(), 1000)
            .await
            .unwrap();
        assert_eq!(&body[..], b"u-1 u-1 reader");
        let refused = call(&app, "/", &[("x-token", "bad")]).await;
        assert_eq!(refused.status(), 401);
        assert_eq!(refused.headers()["www-authenticate"], "Token");
        assert!(refused.headers().get("x-ignored").is_none());
    }
    // Cached by the token: one question per token.
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2);

    // Every refused entry names its key.
    let entry = |keys: &str| format!("{SERVER}[[layer]]\nkind = \"ext-authz\"\n{keys}");
    for (keys, key) in [
        ("", "layer[0]"),
        ("url = \"http://authz/check\"\nforward_headers = [\"bad header\"]\n", "layer[0].forward_headers[0]"),
        ("url = \"http://authz/check\"\non_failure = \"maybe\"\n", "layer[0].on_failure"),
        ("url = \"http://authz/check\"\nencoding = \"xml\"\n", "layer[0].encoding"),
        ("url = \"http://authz/check\"\ntimeout = \"0s\"\n", "layer[0].timeout"),
        ("url = \"http://authz/check\"\nurl2 = 1\n", "layer[0]"),
        ("url = \"http://authz/check\"\n[layer.cache]\nttl = \"1m\"\nmax_entries = 0\n", "layer[0].cache.max_entries"),
        ("url = \"http://authz/check\"\n[layer.cache]\nttl = \"1m\"\nmax_entries = 5\nkey = [\"cookie\"]\n", "layer[0].cache.key[0]"),
    ] {
        let e = error(&entry(keys));
        assert!(e.key.starts_with(key), "{keys}: {e}");
    }
    for (keys, message) in [
        (
            "url = \"ftp://authz/check\"\n",
            "not an http:// or https:// URL",
        ),
        (
            "url = \"http://authz/check\"\nupstream_headers = [\"host\"]\n",
            "cannot be taken",
        ),
    ] {
        let e = parse(&entry(keys)).unwrap().build().await.unwrap_err();
        assert!(e.message.contains(message), "{keys}: {e}");
        assert_eq!(e.key, "layer[0]", "{e}");
    }
}

/// The README's complete file for "Portcullis in front of any service" parses: every
/// key it shows exists.
#[test]
fn the_readme_front_of_any_service_file_parses() {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("## Portcullis in front of any service")
        .nth(1)
        .expect("the section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("its toml block");
    let config = GatewayConfig::parse("README.md", block, std::path::Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.layer_kinds(),
        [
            "audit",
            "rate-limit",
            "api-key",
            "role-router",
            "identity-headers"
        ]
    );
}
