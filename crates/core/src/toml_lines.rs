//! Lines for errors in the project's TOML files (the gateway file, role tables, key
//! files; feature `toml`): an error names the line of the key it is about, found from
//! the parser's spans, not the line of the table around it.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A TOML text, parsed once with spans, to find the line of a key by its path.
///
/// ```
/// use portcullis_core::toml_lines::TomlLines;
///
/// let text = "[server]\nlisten = \"127.0.0.1:0\"\n\n[[layer]]\nkind = \"rate-limit\"\n[[layer.quota]]\nname = \"a\"\nrate = \"ten a second\"\n";
/// let lines = TomlLines::new(text);
/// assert_eq!(lines.line_of("layer[0].quota[0].rate"), Some(8));
/// assert_eq!(lines.line_of("server.listen"), Some(2));
/// // A missing key: the nearest enclosing one the file has.
/// assert_eq!(lines.line_of("layer[0].quota[0].burst"), lines.line_of("layer[0].quota[0]"));
/// // serde's "unknown field": the line of that field.
/// let typo = "[server]\nlisten = \"127.0.0.1:0\"\nlistne = 1\n";
/// assert_eq!(TomlLines::new(typo).line_of_error("server", "unknown field `listne`, expected `listen`"), Some(3));
/// ```
#[derive(Debug)]
pub struct TomlLines<'a> {
    text: &'a str,
    document: Option<Spanned<DeTable<'a>>>,
}

/// One step of a key path: a table's key or an array's index.
#[derive(Debug, PartialEq, Eq)]
enum Step<'p> {
    Key(&'p str),
    Index(usize),
}

impl<'a> TomlLines<'a> {
    /// Parses `text` for its spans; a text that does not parse finds no key (its
    /// parse error carries its own span).
    pub fn new(text: &'a str) -> Self {
        Self {
            text,
            document: DeTable::parse(text).ok(),
        }
    }

    /// The 1-based line of a byte offset (clamped to the text).
    pub fn line_at(&self, offset: usize) -> usize {
        line_at(self.text, offset)
    }

    /// The line of the key at `path` (`layer[2].quota[0].rate`; an empty path is the
    /// document), or of the nearest enclosing key the text has when the key itself is
    /// missing. `None` when not even the first step is in the text.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        self.span_of(path).map(|span| self.line_at(span.start))
    }

    /// The line for a deserializer's error at `path`: for "unknown field `NAME`" the
    /// line of `NAME` inside `path`, otherwise [`TomlLines::line_of`]`(path)`.
    pub fn line_of_error(&self, path: &str, message: &str) -> Option<usize> {
        let unknown = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name);
        if let Some(name) = unknown {
            let inner = if path.is_empty() {
                name.to_owned()
            } else {
                format!("{path}.{name}")
            };
            if let Some(span) = self.exact_span_of(&inner) {
                return Some(self.line_at(span.start));
            }
        }
        self.line_of(path)
    }

    fn exact_span_of(&self, path: &str) -> Option<Range<usize>> {
        let (span, complete) = self.walk(path)?;
        complete.then_some(span)
    }

    fn span_of(&self, path: &str) -> Option<Range<usize>> {
        self.walk(path).map(|(span, _)| span)
    }

    /// The span of the deepest step of `path` found, and whether every step was.
    fn walk(&self, path: &str) -> Option<(Range<usize>, bool)> {
        let document = self.document.as_ref()?;
        let steps = steps(path)?;
        let mut span: Option<Range<usize>> = None;
        let mut table: Option<&DeTable<'a>> = Some(document.get_ref());
        let mut value: Option<&DeValue<'a>> = None;
        for step in &steps {
            let next = match (step, table, value) {
                (Step::Key(key), Some(table), _) => table
                    .iter()
                    .find(|(name, _)| name.get_ref() == key)
                    .map(|(name, value)| (name.span(), value)),
                (Step::Index(index), _, Some(DeValue::Array(array))) => {
                    array.get(*index).map(|value| (value.span(), value))
                }
                _ => None,
            };
            let Some((found, next)) = next else {
                return span.map(|span| (span, false));
            };
            span = Some(found);
            match next.get_ref() {
                DeValue::Table(inner) => {
                    table = Some(inner);
                    value = Some(next.get_ref());
                }
                other => {
                    table = None;
                    value = Some(other);
                }
            }
        }
        span.map(|span| (span, true))
    }
}

/// The 1-based line of a byte offset in `text` (clamped to it).
pub fn line_at(text: &str, offset: usize) -> usize {
    let end = floor_char_boundary(text, offset.min(text.len()));
    text[..end].matches('\n').count() + 1
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// `a.b[2].c` as steps; `None` for a path this module does not write (empty segments).
fn steps(path: &str) -> Option<Vec<Step<'_>>> {
    let mut steps = Vec::new();
    if path.is_empty() {
        return Some(steps);
    }
    for segment in path.split('.') {
        let (key, mut rest) = match segment.find('[') {
            Some(at) => segment.split_at(at),
            None => (segment, ""),
        };
        if key.is_empty() {
            return None;
        }
        steps.push(Step::Key(key));
        while let Some(inner) = rest.strip_prefix('[') {
            let (index, after) = inner.split_once(']')?;
            steps.push(Step::Index(index.parse().ok()?));
            rest = after;
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY: &str = "# a comment\n[server]\nlisten = \"127.0.0.1:0\"\n\n[[layer]]\nkind = \"audit\"\nstdout = true\n\n[[layer]]\nkind = \"rate-limit\"\n\n[[layer.quota]]\nname = \"per-ip\"\nrate = \"10/s\"\n\n[[layer.quota]]\nname = \"per-key\"\nrate = \"oops\"\nkey = [\"api_key\"]\n";

    #[test]
    fn keys_are_found_at_their_own_line() {
        let lines = TomlLines::new(GATEWAY);
        assert_eq!(lines.line_of("server.listen"), Some(3));
        assert_eq!(lines.line_of("layer[1].quota[1].rate"), Some(18));
        assert_eq!(lines.line_of("layer[1].quota[0].name"), Some(13));
        assert_eq!(lines.line_of("layer[0].stdout"), Some(7));
        assert_eq!(lines.line_of("layer[1].quota[1].key[0]"), Some(19));
    }

    #[test]
    fn a_missing_key_falls_back_to_what_encloses_it() {
        let lines = TomlLines::new(GATEWAY);
        let quota = lines.line_of("layer[1].quota[1]").unwrap();
        assert_eq!(lines.line_of("layer[1].quota[1].burst"), Some(quota));
        assert_eq!(lines.line_of("layer[7].kind"), lines.line_of("layer"));
        assert_eq!(lines.line_of("nothing.here"), None);
        assert_eq!(lines.line_of("a..b"), None);
        assert_eq!(lines.line_of("a[x]"), None);
        assert_eq!(lines.line_of("a[1"), None);
    }

    #[test]
    fn unknown_fields_are_found_by_their_name() {
        let text = "[[rule]]\nname = \"a\"\npath = \"/\"\n\nauthenticatd = true\n";
        let lines = TomlLines::new(text);
        assert_eq!(
            lines.line_of_error(
                "rule[0]",
                "unknown field `authenticatd`, expected one of `name`"
            ),
            Some(5)
        );
        // Not an unknown-field message: the path's own line.
        assert_eq!(
            lines.line_of_error("rule[0].path", "invalid pattern"),
            Some(3)
        );
    }

    #[test]
    fn offsets_are_clamped_and_kept_on_character_boundaries() {
        let text = "a = \"é\"\nb = 1\n";
        assert_eq!(line_at(text, 0), 1);
        assert_eq!(line_at(text, 6), 1); // inside the two-byte character
        assert_eq!(line_at(text, 10), 2);
        assert_eq!(line_at(text, 10_000), 3);
        // Text that does not parse finds no key, and no panic.
        assert_eq!(TomlLines::new("[[[").line_of("a"), None);
    }
}
