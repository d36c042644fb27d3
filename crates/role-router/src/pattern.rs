//! Path patterns: `/v1/key/**`, `/v1/key/{id}/attributes`, `/v1/filtered**ApprovalTask`.

use std::fmt;

/// One segment of a compiled pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Matches exactly this text.
    Literal(Box<str>),
    /// `*` or `{name}`: exactly one segment, any text.
    One,
    /// `**`: zero or more segments.
    Any,
    /// A segment with `*` inside (`filtered**ApprovalTask`): the literal pieces in order,
    /// anything between them, never crossing a `/`.
    Glob(Box<[Box<str>]>),
}

/// A compiled path pattern.
///
/// - literal segments match themselves (case-sensitive);
/// - `*` and `{name}` match exactly one segment;
/// - `**` matches any number of segments, including none (`/v1/key/**` matches
///   `/v1/key` and everything below it);
/// - `*` or `**` inside a segment (`filtered**ApprovalTask`) match any text within that
///   one segment.
///
/// A trailing `/` is ignored, as it is in request paths.
#[derive(Clone, PartialEq, Eq)]
pub struct PathPattern {
    source: Box<str>,
    pub(crate) segments: Box<[Segment]>,
}

/// Why a pattern was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternError {
    pattern: String,
    reason: &'static str,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid path pattern `{}`: {}",
            self.pattern, self.reason
        )
    }
}

impl std::error::Error for PatternError {}

impl PathPattern {
    /// Compiles a pattern.
    pub fn new(pattern: &str) -> Result<Self, PatternError> {
        let error = |reason| PatternError {
            pattern: pattern.to_owned(),
            reason,
        };
        let body = pattern
            .strip_prefix('/')
            .ok_or_else(|| error("a pattern starts with '/'"))?;
        let body = body.strip_suffix('/').unwrap_or(body);
        let mut segments = Vec::new();
        if !body.is_empty() {
            for text in body.split('/') {
                segments.push(compile_segment(text).map_err(error)?);
            }
        }
        Ok(Self {
            source: pattern.into(),
            segments: segments.into_boxed_slice(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The leading literal segments, which the policy indexes rules by.
    pub(crate) fn literal_prefix(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().map_while(|s| match s {
            Segment::Literal(text) => Some(&**text),
            _ => None,
        })
    }

    /// Whether a normalized path (see [`normalize`](crate::normalize)) matches.
    pub fn matches(&self, path: &str) -> bool {
        // `Segments` is two words and cheap to clone, so backtracking over `**` needs no
        // allocation.
        matches_segments(&self.segments, &mut Segments::of(path))
    }

    /// Whether the path matches, given that its first `skip` segments are already known
    /// to equal this pattern's first `skip` (literal) segments and `rest` holds the
    /// path's remaining segments.
    pub(crate) fn matches_after(&self, skip: usize, rest: &Segments<'_>) -> bool {
        matches_segments(&self.segments[skip..], &mut rest.clone())
    }

    /// Whether every path this pattern's `other` matches is matched by `self` too. Sound
    /// but not complete: `true` is always right, `false` may miss a subtle cover.
    pub(crate) fn covers(&self, other: &PathPattern) -> bool {
        covers(&self.segments, &other.segments)
    }
}

impl fmt::Debug for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PathPattern").field(&self.source).finish()
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn compile_segment(text: &str) -> Result<Segment, &'static str> {
    if text.is_empty() {
        return Err("empty segment ('//')");
    }
    if text == "." || text == ".." {
        return Err("'.' and '..' segments never match a request path");
    }
    if text == "**" {
        return Ok(Segment::Any);
    }
    if text == "*" {
        return Ok(Segment::One);
    }
    if let Some(name) = text.strip_prefix('{') {
        let name = name
            .strip_suffix('}')
            .ok_or("a parameter is written '{name}'")?;
        if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return Err("a parameter name is letters, digits and '_'");
        }
        return Ok(Segment::One);
    }
    if text.contains(['{', '}']) {
        return Err("'{' and '}' only wrap a whole-segment parameter");
    }
    if text.contains('*') {
        let pieces: Vec<Box<str>> = text.split('*').map(Into::into).collect();
        return Ok(Segment::Glob(pieces.into_boxed_slice()));
    }
    Ok(Segment::Literal(text.into()))
}

/// The segments of a normalized path, without allocating: `/a/b` gives `a`, `b`; `/`
/// gives none.
#[derive(Clone, Debug)]
pub(crate) struct Segments<'a> {
    rest: Option<&'a str>,
}

impl<'a> Segments<'a> {
    pub(crate) fn of(path: &'a str) -> Self {
        let body = path.strip_prefix('/').unwrap_or(path);
        Self {
            rest: (!body.is_empty()).then_some(body),
        }
    }
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        // Segments are short: a plain byte loop beats a general-purpose searcher here.
        match rest.bytes().position(|b| b == b'/') {
            Some(at) => {
                self.rest = Some(&rest[at + 1..]);
                Some(&rest[..at])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

fn matches_segments(pattern: &[Segment], path: &mut Segments<'_>) -> bool {
    let Some((first, rest)) = pattern.split_first() else {
        return path.next().is_none();
    };
    if let Segment::Any = first {
        if rest.is_empty() {
            // A trailing `**` takes whatever is left.
            return true;
        }
        // Try `**` as zero segments, then one more, and so on.
        let mut remaining = path.clone();
        loop {
            if matches_segments(rest, &mut remaining.clone()) {
                return true;
            }
            if remaining.next().is_none() {
                return false;
            }
        }
    }
    match path.next() {
        Some(segment) if segment_matches(first, segment) => matches_segments(rest, path),
        _ => false,
    }
}

fn segment_matches(pattern: &Segment, segment: &str) -> bool {
    match pattern {
        Segment::Literal(text) => **text == *segment,
        Segment::One => !segment.is_empty(),
        Segment::Any => true,
        Segment::Glob(pieces) => glob_matches(pieces, segment),
    }
}

/// `pieces` are the texts between `*`s: the first must start the segment, the last end
/// it, the others appear in order between.
fn glob_matches(pieces: &[Box<str>], segment: &str) -> bool {
    let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
        return true;
    };
    if pieces.len() == 1 {
        return **first == *segment;
    }
    let Some(mut rest) = segment.strip_prefix(&**first) else {
        return false;
    };
    for middle in &pieces[1..pieces.len() - 1] {
        match rest.find(&**middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    rest.ends_with(&**last)
}

fn covers(a: &[Segment], b: &[Segment]) -> bool {
    match (a.split_first(), b.split_first()) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some((Segment::Any, a_rest)), _) => {
            covers(a_rest, b) || b.split_first().is_some_and(|(_, b_rest)| covers(a, b_rest))
        }
        (Some(_), None) => false,
        (Some(_), Some((Segment::Any, _))) => false,
        (Some((a_first, a_rest)), Some((b_first, b_rest))) => {
            segment_covers(a_first, b_first) && covers(a_rest, b_rest)
        }
    }
}

fn segment_covers(a: &Segment, b: &Segment) -> bool {
    match (a, b) {
        (Segment::One, _) => true,
        (Segment::Literal(x), Segment::Literal(y)) => x == y,
        (Segment::Glob(pieces), Segment::Literal(text)) => glob_matches(pieces, text),
        (Segment::Glob(x), Segment::Glob(y)) => x == y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(pattern: &str) -> PathPattern {
        PathPattern::new(pattern).unwrap()
    }

    #[test]
    fn hsm_patterns() {
        let keys = p("/v1/key/**");
        assert!(keys.matches("/v1/key"));
        assert!(keys.matches("/v1/key/abc"));
        assert!(keys.matches("/v1/key/abc/attributes"));
        assert!(!keys.matches("/v1/keys"));
        assert!(!keys.matches("/v1"));

        let attrs = p("/v1/key/**/attributes");
        assert!(attrs.matches("/v1/key/attributes"));
        assert!(attrs.matches("/v1/key/a/b/attributes"));
        assert!(!attrs.matches("/v1/key/a/attributes/x"));

        let approval = p("/v1/filtered**ApprovalTask");
        assert!(approval.matches("/v1/filteredApprovalTask"));
        assert!(approval.matches("/v1/filteredKeyApprovalTask"));
        assert!(!approval.matches("/v1/filteredKey/ApprovalTask"));
        assert!(!approval.matches("/v1/filteredKeyApprovalTasks"));

        let version = p("/v1/versionInfo");
        assert!(version.matches("/v1/versionInfo"));
        assert!(!version.matches("/v1/versioninfo"));
    }

    #[test]
    fn parameters_and_single_stars() {
        let key = p("/v1/key/{id}/sign");
        assert!(key.matches("/v1/key/k-1/sign"));
        assert!(!key.matches("/v1/key/sign"));
        assert!(!key.matches("/v1/key/a/b/sign"));
        let star = p("/grpc.health.v1.Health/*");
        assert!(star.matches("/grpc.health.v1.Health/Check"));
        assert!(!star.matches("/grpc.health.v1.Health"));
    }

    #[test]
    fn root_and_everything() {
        assert!(p("/").matches("/"));
        assert!(!p("/").matches("/a"));
        assert!(p("/**").matches("/"));
        assert!(p("/**").matches("/a/b/c"));
        assert!(p("/a/").matches("/a"));
    }

    #[test]
    fn bad_patterns_say_why() {
        for (pattern, reason) in [
            ("v1/key", "starts with '/'"),
            ("/v1//key", "empty segment"),
            ("/v1/../key", "'.' and '..'"),
            ("/v1/{id", "'{name}'"),
            ("/v1/{}", "parameter name"),
            ("/v1/{a-b}", "parameter name"),
            ("/v1/x{id}", "whole-segment"),
        ] {
            let err = PathPattern::new(pattern).unwrap_err().to_string();
            assert!(err.contains(reason), "{pattern}: {err}");
            assert!(err.contains(pattern), "{err}");
        }
    }

    #[test]
    fn cover_relation() {
        assert!(p("/**").covers(&p("/v1/key/{id}")));
        assert!(p("/v1/key/**").covers(&p("/v1/key/**/attributes")));
        assert!(p("/v1/key/**").covers(&p("/v1/key")));
        assert!(p("/v1/*").covers(&p("/v1/versionInfo")));
        assert!(p("/v1/filtered*").covers(&p("/v1/filteredApprovalTask")));
        assert!(p("/v1/{id}").covers(&p("/v1/*")));
        assert!(!p("/v1/key").covers(&p("/v1/key/**")));
        assert!(!p("/v1/*").covers(&p("/v1/**")));
        assert!(!p("/v1/key/**/attributes").covers(&p("/v1/key/**")));
        assert!(!p("/v1/versionInfo").covers(&p("/v1/*")));
    }

    fn arb_segment() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ab]{1,2}".prop_map(String::from),
            Just("*".to_owned()),
            Just("**".to_owned()),
            Just("{id}".to_owned()),
            "[ab]\\*[ab]".prop_map(String::from),
        ]
    }

    fn arb_pattern() -> impl Strategy<Value = String> {
        proptest::collection::vec(arb_segment(), 0..4).prop_map(|s| format!("/{}", s.join("/")))
    }

    fn arb_path() -> impl Strategy<Value = String> {
        proptest::collection::vec("[ab]{1,3}", 0..5).prop_map(|s| format!("/{}", s.join("/")))
    }

    /// A deliberately naive matcher over owned segment lists, trying every split.
    fn reference(pattern: &str, path: &str) -> bool {
        let split = |s: &str| -> Vec<String> {
            s.split('/')
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()
        };
        fn wildcard(p: &[char], t: &[char]) -> bool {
            match p.split_first() {
                None => t.is_empty(),
                Some(('*', rest)) => (0..=t.len()).any(|i| wildcard(rest, &t[i..])),
                Some((c, rest)) => t.first() == Some(c) && wildcard(rest, &t[1..]),
            }
        }
        fn go(p: &[String], t: &[String]) -> bool {
            match p.split_first() {
                None => t.is_empty(),
                Some((seg, rest)) if seg == "**" => (0..=t.len()).any(|i| go(rest, &t[i..])),
                Some((seg, rest)) => {
                    let Some((first, t_rest)) = t.split_first() else {
                        return false;
                    };
                    let ok = if seg == "*" || seg == "{id}" {
                        true
                    } else {
                        let pc: Vec<char> = seg.chars().collect();
                        let tc: Vec<char> = first.chars().collect();
                        wildcard(&pc, &tc)
                    };
                    ok && go(rest, t_rest)
                }
            }
        }
        go(&split(pattern), &split(path))
    }

    proptest! {
        // The compiled matcher agrees with the naive one on random patterns and paths.
        #[test]
        fn agrees_with_reference(pattern in arb_pattern(), path in arb_path()) {
            let compiled = PathPattern::new(&pattern).unwrap();
            prop_assert_eq!(compiled.matches(&path), reference(&pattern, &path), "{} vs {}", pattern, path);
        }

        // `covers` is sound: when it says a covers b, every path b matches, a matches.
        #[test]
        fn covers_is_sound(a in arb_pattern(), b in arb_pattern(), paths in proptest::collection::vec(arb_path(), 1..20)) {
            let (a, b) = (PathPattern::new(&a).unwrap(), PathPattern::new(&b).unwrap());
            if a.covers(&b) {
                for path in &paths {
                    if b.matches(path) {
                        prop_assert!(a.matches(path), "{:?} covers {:?} but not {}", a, b, path);
                    }
                }
            }
        }
    }
}
