//! The route a request matched, as a pattern (`/items/{id}`), for per-route keys.

use std::sync::Arc;

/// The route pattern a request matched (`/v1/key/**`, `/items/{id}`), not its path.
/// Per-route rate limits key on it, so that `/items/1` and `/items/2` share one quota.
///
/// The role router inserts it when asked to
/// (`RoleRouterLayer::mark_matched_route`); a host with its own router may insert it
/// too. axum's `MatchedPath` is read as well (feature `axum`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchedRoute(pub Arc<str>);

/// The request's matched route: a [`MatchedRoute`] in the extensions, else axum's
/// `MatchedPath` (feature `axum`).
pub fn matched_route(extensions: &http::Extensions) -> Option<&str> {
    if let Some(MatchedRoute(route)) = extensions.get::<MatchedRoute>() {
        return Some(route);
    }
    #[cfg(feature = "axum")]
    if let Some(path) = extensions.get::<axum::extract::MatchedPath>() {
        return Some(path.as_str());
    }
    None
}
