//! Parsers for the headers in which proxies name the client: `Forwarded` (RFC 7239),
//! `X-Forwarded-For` and `X-Real-IP`.
//!
//! They are strict: a header that does not follow its grammar is an error, never a
//! guess. None of them allocates.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::authorization::is_tchar;

/// One hop of a forwarding chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    /// A known address.
    Ip(IpAddr),
    /// `unknown`, an obfuscated identifier (`_hidden`), or a `Forwarded` element
    /// without `for`: the proxy did not disclose the address.
    Undisclosed,
}

/// A parser of one header line: calls its callback with each hop, in order. `budget` is
/// how many more hops may be read (shared by every line of the header); a hop past it
/// is refused before it is parsed.
pub(crate) type ChainParser = fn(&str, &mut usize, &mut dyn FnMut(Node)) -> Result<(), Malformed>;

/// Takes one hop from the budget, or refuses the chain.
fn spend(budget: &mut usize) -> Result<(), Malformed> {
    *budget = budget.checked_sub(1).ok_or(Malformed)?;
    Ok(())
}

/// The header did not follow its grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Malformed;

/// Calls `each` with the `for` node of every element of a `Forwarded` header line, in
/// order.
pub(crate) fn forwarded_nodes(
    line: &str,
    budget: &mut usize,
    each: &mut dyn FnMut(Node),
) -> Result<(), Malformed> {
    let mut cursor = Cursor::new(line);
    loop {
        spend(budget)?;
        // forwarded-element = [ forwarded-pair ] *( ";" [ forwarded-pair ] )
        let mut node: Option<Node> = None;
        let mut pairs = 0usize;
        loop {
            cursor.skip_ows();
            if cursor.at_element_end() {
                break;
            }
            if cursor.eat(b';') {
                continue;
            }
            let name = cursor.token().ok_or(Malformed)?;
            if !cursor.eat(b'=') {
                return Err(Malformed);
            }
            let value = cursor.value()?;
            pairs += 1;
            if name.eq_ignore_ascii_case("for") {
                // Each parameter may occur once per element (RFC 7239, section 4).
                if node.is_some() {
                    return Err(Malformed);
                }
                node = Some(forwarded_node(value)?);
            }
            cursor.skip_ows();
            if !cursor.at_element_end() && !cursor.eat(b';') {
                return Err(Malformed);
            }
        }
        if pairs == 0 {
            // An empty element (`a, ,b` or a blank header) follows no proxy's grammar.
            return Err(Malformed);
        }
        each(node.unwrap_or(Node::Undisclosed));
        if cursor.is_done() {
            return Ok(());
        }
        // at_element_end and not done: a comma.
        cursor.eat(b',');
    }
}

/// A `for` value (already unquoted): `node = nodename [ ":" node-port ]`.
fn forwarded_node(value: Value<'_>) -> Result<Node, Malformed> {
    let text = match value {
        Value::Token(text) => text,
        // Nothing in a valid node needs a quoted-pair.
        Value::Quoted(text) if !text.contains('\\') => text,
        Value::Quoted(_) => return Err(Malformed),
    };
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or(Malformed)?;
        let ip: Ipv6Addr = inside.parse().map_err(|_| Malformed)?;
        node_port(after)?;
        return Ok(Node::Ip(IpAddr::V6(ip)));
    }
    let (name, port) = match text.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (text, None),
    };
    if let Some(port) = port {
        node_port_value(port)?;
    }
    if name.eq_ignore_ascii_case("unknown") {
        return Ok(Node::Undisclosed);
    }
    if name.starts_with('_') {
        return obfuscated(name).map(|()| Node::Undisclosed);
    }
    let ip: Ipv4Addr = name.parse().map_err(|_| Malformed)?;
    Ok(Node::Ip(IpAddr::V4(ip)))
}

/// What may follow a node name: nothing, or `:` and a port.
fn node_port(after: &str) -> Result<(), Malformed> {
    match after.strip_prefix(':') {
        None if after.is_empty() => Ok(()),
        None => Err(Malformed),
        Some(port) => node_port_value(port),
    }
}

/// `node-port = port / obfport`, `port = 1*5DIGIT`.
fn node_port_value(port: &str) -> Result<(), Malformed> {
    if port.starts_with('_') {
        return obfuscated(port);
    }
    if (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(Malformed)
    }
}

/// `obfnode = "_" 1*( ALPHA / DIGIT / "." / "_" / "-")`.
fn obfuscated(text: &str) -> Result<(), Malformed> {
    let rest = text.strip_prefix('_').ok_or(Malformed)?;
    if !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Ok(())
    } else {
        Err(Malformed)
    }
}

/// Calls `each` with every entry of an `X-Forwarded-For` header line, in order.
///
/// Entries are addresses, optionally with a port (`192.0.2.1:4711`, `[2001:db8::1]:4711`),
/// or `unknown`. Empty entries are refused.
pub(crate) fn x_forwarded_for_nodes(
    line: &str,
    budget: &mut usize,
    each: &mut dyn FnMut(Node),
) -> Result<(), Malformed> {
    for entry in line.split(',') {
        spend(budget)?;
        each(x_forwarded_for_entry(entry.trim_matches(is_ows))?);
    }
    Ok(())
}

fn x_forwarded_for_entry(entry: &str) -> Result<Node, Malformed> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Ok(Node::Ip(ip));
    }
    if entry.eq_ignore_ascii_case("unknown") {
        return Ok(Node::Undisclosed);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or(Malformed)?;
        let ip: Ipv6Addr = inside.parse().map_err(|_| Malformed)?;
        numeric_port(after.strip_prefix(':'), after)?;
        return Ok(Node::Ip(IpAddr::V6(ip)));
    }
    let (name, port) = entry.split_once(':').ok_or(Malformed)?;
    let ip: Ipv4Addr = name.parse().map_err(|_| Malformed)?;
    numeric_port(Some(port), port)?;
    Ok(Node::Ip(IpAddr::V4(ip)))
}

fn numeric_port(port: Option<&str>, after: &str) -> Result<(), Malformed> {
    match port {
        None if after.is_empty() => Ok(()),
        Some(port) if port.parse::<u16>().is_ok() && port.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(())
        }
        _ => Err(Malformed),
    }
}

/// An `X-Real-IP` value: one address.
pub(crate) fn x_real_ip(value: &str) -> Result<IpAddr, Malformed> {
    value.trim_matches(is_ows).parse().map_err(|_| Malformed)
}

fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

enum Value<'a> {
    Token(&'a str),
    /// The text between the quotes, quoted-pairs not yet resolved.
    Quoted(&'a str),
}

struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, at: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn is_done(&self) -> bool {
        self.at >= self.text.len()
    }

    fn at_element_end(&self) -> bool {
        matches!(self.peek(), None | Some(b','))
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn token(&mut self) -> Option<&'a str> {
        let start = self.at;
        while self.peek().is_some_and(is_tchar) {
            self.at += 1;
        }
        (self.at > start).then(|| &self.text[start..self.at])
    }

    /// `value = token / quoted-string`.
    fn value(&mut self) -> Result<Value<'a>, Malformed> {
        if !self.eat(b'"') {
            return self.token().map(Value::Token).ok_or(Malformed);
        }
        let start = self.at;
        loop {
            match self.peek() {
                None => return Err(Malformed),
                Some(b'"') => {
                    let inside = &self.text[start..self.at];
                    self.at += 1;
                    return Ok(Value::Quoted(inside));
                }
                Some(b'\\') => {
                    // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
                    self.at += 1;
                    match self.peek() {
                        Some(b) if b == b'\t' || b >= 0x20 && b != 0x7f => self.at += 1,
                        _ => return Err(Malformed),
                    }
                }
                // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
                Some(b) if b == b'\t' || b >= 0x20 && b != 0x7f => self.at += 1,
                Some(_) => return Err(Malformed),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn forwarded(line: &str) -> Result<Vec<Node>, Malformed> {
        let mut nodes = Vec::new();
        let mut budget = usize::MAX;
        forwarded_nodes(line, &mut budget, &mut |n| nodes.push(n))?;
        Ok(nodes)
    }

    fn xff(line: &str) -> Result<Vec<Node>, Malformed> {
        let mut nodes = Vec::new();
        let mut budget = usize::MAX;
        x_forwarded_for_nodes(line, &mut budget, &mut |n| nodes.push(n))?;
        Ok(nodes)
    }

    fn ip(text: &str) -> Node {
        Node::Ip(text.parse().unwrap())
    }

    /// The budget is spent one hop at a time across calls, and a hop past it is refused
    /// before it is parsed (the garbage after the limit is never looked at).
    #[test]
    fn chains_stop_at_the_budget() {
        let mut budget = 3;
        let mut seen = 0;
        x_forwarded_for_nodes("192.0.2.1, 192.0.2.2", &mut budget, &mut |_| seen += 1).unwrap();
        assert_eq!((budget, seen), (1, 2));
        assert!(
            x_forwarded_for_nodes("192.0.2.3, not-parsed", &mut budget, &mut |_| seen += 1)
                .is_err()
        );
        assert_eq!(seen, 3);
        let mut budget = 2;
        let mut seen = 0;
        assert!(forwarded_nodes(
            "for=192.0.2.1, for=192.0.2.2, for=@@@",
            &mut budget,
            &mut |_| seen += 1
        )
        .is_err());
        assert_eq!(seen, 2);
    }

    #[test]
    fn forwarded_rfc7239_examples() {
        // The examples of RFC 7239, sections 4 and 7.
        assert_eq!(forwarded(r#"for="_gazonk""#), Ok(vec![Node::Undisclosed]));
        assert_eq!(
            forwarded(r#"For="[2001:db8:cafe::17]:4711""#),
            Ok(vec![ip("2001:db8:cafe::17")])
        );
        assert_eq!(
            forwarded("for=192.0.2.60;proto=http;by=203.0.113.43"),
            Ok(vec![ip("192.0.2.60")])
        );
        assert_eq!(
            forwarded("for=192.0.2.43, for=198.51.100.17"),
            Ok(vec![ip("192.0.2.43"), ip("198.51.100.17")])
        );
        assert_eq!(
            forwarded(r#"for=192.0.2.43,for="[2001:db8:cafe::17]",for=unknown"#),
            Ok(vec![
                ip("192.0.2.43"),
                ip("2001:db8:cafe::17"),
                Node::Undisclosed
            ])
        );
        assert_eq!(
            forwarded(r#"for=unknown, for="_hidden:_port""#),
            Ok(vec![Node::Undisclosed, Node::Undisclosed])
        );
        assert_eq!(
            forwarded(r#"for="192.0.2.43:47011""#),
            Ok(vec![ip("192.0.2.43")])
        );
    }

    #[test]
    fn forwarded_elements_without_for_are_undisclosed() {
        assert_eq!(
            forwarded("proto=https;host=example.com, for=192.0.2.1"),
            Ok(vec![Node::Undisclosed, ip("192.0.2.1")])
        );
        assert_eq!(
            forwarded("for=192.0.2.1;;proto=https;"),
            Ok(vec![ip("192.0.2.1")])
        );
    }

    #[test]
    fn forwarded_quoted_values_with_commas_and_escapes_are_skipped_correctly() {
        assert_eq!(
            forwarded(r#"host="a,b\"c";for=192.0.2.1, for=192.0.2.2"#),
            Ok(vec![ip("192.0.2.1"), ip("192.0.2.2")])
        );
    }

    #[test]
    fn forwarded_refuses_malformed() {
        for line in [
            "",
            " ",
            ",",
            "for=192.0.2.1,",
            "for=192.0.2.1,,for=192.0.2.2",
            "for",
            "for=",
            "=192.0.2.1",
            "for=192.0.2.1 for=192.0.2.2",
            "for=192.0.2.1;for=192.0.2.2",
            "for=[2001:db8::1]",
            "for=2001:db8::1",
            r#"for="2001:db8::1""#,
            r#"for="[2001:db8::1""#,
            r#"for="[2001:db8::1]x""#,
            r#"for="[2001:db8::1]:""#,
            r#"for="[2001:db8::1]:123456""#,
            r#"for="[192.0.2.1]""#,
            r#"for="192.0.2.1:80:80""#,
            r#"for="192.0.2.1:http""#,
            "for=192.0.2.256",
            "for=example.com",
            "for=_",
            r#"for="_a b""#,
            r#"for="192.0.2.1"#,
            r#"for="\192.0.2.1""#,
            "for=192.0.2.1\u{7f}",
            "for=\"a\u{1}\"",
            "for=unknown:",
        ] {
            assert_eq!(forwarded(line), Err(Malformed), "{line:?}");
        }
    }

    #[test]
    fn x_forwarded_for_entries() {
        assert_eq!(
            xff("203.0.113.195, 2001:db8:85a3::8a2e:370:7334 ,198.51.100.178"),
            Ok(vec![
                ip("203.0.113.195"),
                ip("2001:db8:85a3::8a2e:370:7334"),
                ip("198.51.100.178")
            ])
        );
        assert_eq!(
            xff("192.0.2.1:4711,[2001:db8::1]:80,[2001:db8::2],unknown"),
            Ok(vec![
                ip("192.0.2.1"),
                ip("2001:db8::1"),
                ip("2001:db8::2"),
                Node::Undisclosed
            ])
        );
    }

    #[test]
    fn x_forwarded_for_refuses_malformed() {
        for line in [
            "",
            ",",
            "192.0.2.1,",
            "192.0.2.1,,192.0.2.2",
            "192.0.2.1 192.0.2.2",
            "example.com",
            "192.0.2.1:",
            "192.0.2.1:99999",
            "192.0.2.1:+80",
            "[2001:db8::1",
            "[2001:db8::1]x",
            "[192.0.2.1]",
            "_hidden",
            "192.0.2.1;for=x",
        ] {
            assert_eq!(xff(line), Err(Malformed), "{line:?}");
        }
    }

    #[test]
    fn x_real_ip_values() {
        assert_eq!(x_real_ip(" 192.0.2.1 "), Ok("192.0.2.1".parse().unwrap()));
        assert_eq!(x_real_ip("2001:db8::1"), Ok("2001:db8::1".parse().unwrap()));
        assert_eq!(x_real_ip("192.0.2.1, 192.0.2.2"), Err(Malformed));
        assert_eq!(x_real_ip(""), Err(Malformed));
        assert_eq!(x_real_ip("[2001:db8::1]"), Err(Malformed));
    }

    proptest! {
        #[test]
        fn forwarded_never_panics(line in "\\PC{0,120}") {
            let _ = forwarded(&line);
        }

        #[test]
        fn forwarded_never_panics_on_near_valid_input(
            line in r#"(for|by|proto|host)=("?\[?[0-9a-f:._]{0,20}\]?(:[0-9_a-z]{0,6})?"?)(;|, ?)?"#
        ) {
            let _ = forwarded(&line);
        }

        #[test]
        fn x_forwarded_for_never_panics(line in "\\PC{0,120}") {
            let _ = xff(&line);
        }

        // Any list of addresses written the way proxies write them parses back in order.
        #[test]
        fn written_chains_parse_back(addrs in proptest::collection::vec(any::<IpAddr>(), 1..8)) {
            let xff_line = addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            let expected: Vec<Node> = addrs.iter().copied().map(Node::Ip).collect();
            prop_assert_eq!(xff(&xff_line), Ok(expected.clone()));
            let forwarded_line = addrs
                .iter()
                .map(|a| match a {
                    IpAddr::V4(v4) => format!("for={v4}"),
                    IpAddr::V6(v6) => format!("for=\"[{v6}]:443\";proto=https"),
                })
                .collect::<Vec<_>>()
                .join(", ");
            prop_assert_eq!(forwarded(&forwarded_line), Ok(expected));
        }
    }
}
