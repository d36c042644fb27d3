//! Portcullis layers behind real servers bound to 127.0.0.1: axum, tonic, and plain
//! hyper through hyper-util, driven by real clients.
//!
//! All of 127.0.0.0/8 is loopback on Linux, so the client binds its socket to a chosen
//! source address (127.0.0.1, 127.0.0.66, …) to play different clients and proxies.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod api_key_axum;
mod api_key_tonic;
mod audit_axum;
mod client;
mod examples;
mod extractors;
mod gateway;
mod identity_headers;
mod ip_allowlist_axum;
mod ip_allowlist_hyper;
mod ip_allowlist_tonic;
mod jwt_axum;
mod mtls_axum;
mod mtls_ocsp;
mod ocsp_responder;
mod production;
mod proxy_protocol;
mod rate_limit_axum;
mod rate_limit_leases;
mod rate_limit_redis;
mod rate_limit_redis_topologies;
mod redis_server;
mod role_router_axum;
mod role_router_tonic;
mod serving;
mod stand_in;
mod upstream_proxy;
