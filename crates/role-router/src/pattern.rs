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
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid path pattern `{pattern}`: {reason}")]
pub struct PatternError {
    pattern: String,
    reason: &'static str,
}

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
        matches_counting(&self.segments, Segments::of(path), &mut 0)
    }

    /// Whether the path matches, given that its first `skip` segments are already known
    /// to equal this pattern's first `skip` (literal) segments and `rest` holds the
    /// path's remaining segments.
    pub(crate) fn matches_after(&self, skip: usize, rest: &Segments<'_>) -> bool {
        matches_counting(&self.segments[skip..], rest.clone(), &mut 0)
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

/// Matches with one backtracking point, the last `**` seen, as glob matchers do for `*`:
/// on a mismatch the last `**` takes one more segment and matching resumes after it.
/// Every other segment of a pattern consumes exactly one path segment, so this is exact,
/// and its work is at most (pattern segments + 1) × (path segments + 1) steps, however
/// many `**` the pattern holds (a recursive matcher is exponential in them). `steps`
/// counts the segment comparisons, for tests that bound the work.
pub(crate) fn matches_counting(pattern: &[Segment], path: Segments<'_>, steps: &mut usize) -> bool {
    let mut at = 0;
    let mut path = path;
    // After the last `**`: the pattern index that follows it, and the path position
    // from which the rest of the pattern is tried next.
    let mut resume: Option<(usize, Segments<'_>)> = None;
    loop {
        *steps += 1;
        let mut after = path.clone();
        let next = after.next();
        match (pattern.get(at), next) {
            (Some(Segment::Any), _) => {
                at += 1;
                resume = Some((at, path.clone()));
                continue;
            }
            (Some(segment), Some(text)) if segment_matches(segment, text) => {
                at += 1;
                path = after;
                continue;
            }
            (None, None) => return true,
            _ => {}
        }
        // A mismatch: let the last `**` take one more segment, or fail.
        let Some((resume_at, from)) = &mut resume else {
            return false;
        };
        if from.next().is_none() {
            return false;
        }
        at = *resume_at;
        path = from.clone();
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

/// Whether `a` matches every path `b` matches (sound, not complete). Computed over the
/// table of suffix pairs, each filled once: (|a| + 1) × (|b| + 1) cells, where the
/// recursive form took time exponential in the number of `**`.
fn covers(a: &[Segment], b: &[Segment]) -> bool {
    covers_counting(a, b, &mut 0)
}

pub(crate) fn covers_counting(a: &[Segment], b: &[Segment], steps: &mut usize) -> bool {
    let width = b.len() + 1;
    // cell(i, j): a[i..] covers b[j..]. Filled from the ends towards the start.
    let mut table = vec![false; (a.len() + 1) * width];
    for i in (0..=a.len()).rev() {
        for j in (0..=b.len()).rev() {
            *steps += 1;
            let value = match (a.get(i), b.get(j)) {
                (None, None) => true,
                (None, Some(_)) => false,
                (Some(Segment::Any), _) => {
                    table[(i + 1) * width + j] || (j < b.len() && table[i * width + j + 1])
                }
                (Some(_), None) => false,
                (Some(_), Some(Segment::Any)) => false,
                (Some(a_first), Some(b_first)) => {
                    segment_covers(a_first, b_first) && table[(i + 1) * width + j + 1]
                }
            };
            table[i * width + j] = value;
        }
    }
    table[0]
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
        proptest::collection::vec(arb_segment(), 0..7).prop_map(|s| format!("/{}", s.join("/")))
    }

    fn arb_path() -> impl Strategy<Value = String> {
        proptest::collection::vec("[ab]{1,3}", 0..8).prop_map(|s| format!("/{}", s.join("/")))
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

    #[test]
    fn adversarial_patterns_and_paths_take_bounded_steps() {
        // Once a core-minute with the recursive matcher: many `**`, a long path that
        // almost matches.
        let pattern = p("/**/a/**/a/**/a/**/a/**/a/**/a/**/b");
        let path = format!("{}/c", "/a".repeat(2_000));
        let mut steps = 0;
        assert!(!matches_counting(
            &pattern.segments,
            Segments::of(&path),
            &mut steps
        ));
        let bound = (pattern.segments.len() + 1) * (2_001 + 1);
        assert!(steps <= bound, "{steps} steps, bound {bound}");

        let dozen = p(&format!("{}/b", "/**/a".repeat(12)));
        let mut steps = 0;
        assert!(covers_counting(
            &dozen.segments,
            &dozen.segments,
            &mut steps
        ));
        assert_eq!(
            steps,
            (dozen.segments.len() + 1) * (dozen.segments.len() + 1)
        );
        let other = p(&format!("{}/c", "/**/a/*".repeat(12)));
        let mut steps = 0;
        assert!(!covers_counting(
            &dozen.segments,
            &other.segments,
            &mut steps
        ));
        assert!(steps <= (dozen.segments.len() + 1) * (other.segments.len() + 1));
    }

    proptest! {
        /// The work is at most (pattern + 1) × (path + 1) steps on any pattern and path.
        #[test]
        fn matching_work_is_bounded(pattern in arb_pattern(), path in arb_path()) {
            let compiled = PathPattern::new(&pattern).unwrap();
            let mut steps = 0;
            matches_counting(&compiled.segments, Segments::of(&path), &mut steps);
            let segments = Segments::of(&path).count();
            prop_assert!(steps <= (compiled.segments.len() + 1) * (segments + 1) + compiled.segments.len());
        }

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
