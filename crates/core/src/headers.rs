//! Field lines that several layers share, such as `Authorization`.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Removes every line of the field `name` for which `ours` is true, and keeps the other
/// lines in their order. A credential layer removes only the lines that carried its
/// credential: another layer's `Authorization` line (a bearer token beside an API key)
/// stays for that layer, and a credential on a second line is never left behind for the
/// inner service.
///
/// ```
/// use http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
/// let mut headers = HeaderMap::new();
/// headers.append(AUTHORIZATION, HeaderValue::from_static("Bearer a.b.c"));
/// headers.append(AUTHORIZATION, HeaderValue::from_static("ApiKey pck_1"));
/// portcullis_core::remove_field_lines(&mut headers, &AUTHORIZATION, |value| {
///     value.as_bytes().starts_with(b"ApiKey ")
/// });
/// let left: Vec<_> = headers.get_all(AUTHORIZATION).iter().collect();
/// assert_eq!(left, ["Bearer a.b.c"]);
/// ```
pub fn remove_field_lines(
    headers: &mut HeaderMap,
    name: &HeaderName,
    mut ours: impl FnMut(&HeaderValue) -> bool,
) {
    let (mut total, mut matching) = (0usize, 0usize);
    for value in headers.get_all(name) {
        total += 1;
        if ours(value) {
            matching += 1;
        }
    }
    if matching == 0 {
        return;
    }
    if matching == total {
        headers.remove(name);
        return;
    }
    // Rare: lines of several owners. Evaluated once more, in the same order.
    let kept: Vec<HeaderValue> = headers
        .get_all(name)
        .iter()
        .filter(|value| !ours(value))
        .cloned()
        .collect();
    headers.remove(name);
    for value in kept {
        headers.append(name.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::AUTHORIZATION;

    #[test]
    fn only_matching_lines_go_and_the_rest_keep_their_order() {
        let mut headers = HeaderMap::new();
        for value in ["a 1", "b 2", "a 3", "c 4"] {
            headers.append(AUTHORIZATION, HeaderValue::from_static(value));
        }
        remove_field_lines(&mut headers, &AUTHORIZATION, |v| v.as_bytes()[0] == b'a');
        let left: Vec<_> = headers.get_all(AUTHORIZATION).iter().collect();
        assert_eq!(left, ["b 2", "c 4"]);
        remove_field_lines(&mut headers, &AUTHORIZATION, |_| false);
        assert_eq!(headers.get_all(AUTHORIZATION).iter().count(), 2);
        remove_field_lines(&mut headers, &AUTHORIZATION, |_| true);
        assert!(headers.get(AUTHORIZATION).is_none());
    }
}
