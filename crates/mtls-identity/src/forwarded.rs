//! The client certificate forwarded by a TLS-terminating proxy in a header: Envoy's
//! `X-Forwarded-Client-Cert`, or a URL-escaped PEM as nginx's `$ssl_client_escaped_cert`.

use http::header::HeaderName;
use http::Request;
use percent_encoding::percent_decode_str;
use portcullis_core::{socket_peer, NetworkSet};

/// How the proxy writes the certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateHeaderFormat {
    /// Envoy's `X-Forwarded-Client-Cert`: `By=…;Hash=…;Cert="<URL-escaped PEM>";…`,
    /// elements separated by commas. The last element is the one the proxy next to
    /// this server added. When it has a `Hash`, it must be the SHA-256 of the `Cert`
    /// (hex, either case), and `Cert` or `Hash` given twice is refused: an element that
    /// names two certificates is `untrusted_client_cert`.
    EnvoyXfcc,
    /// A URL-escaped PEM certificate, as nginx's `$ssl_client_escaped_cert`.
    EscapedPem,
}

/// Where a trusted proxy puts the client certificate. The header is believed only when
/// the socket peer is one of `proxies`; from anyone else it is removed and ignored, so a
/// client cannot claim a certificate it does not hold.
///
/// ```
/// use portcullis_mtls_identity::ForwardedCertificate;
///
/// let envoy = ForwardedCertificate::envoy("10.0.0.0/8".parse()?);
/// let nginx = ForwardedCertificate::escaped_pem(
///     http::HeaderName::from_static("x-ssl-client-cert"),
///     "10.0.0.5/32".parse()?,
/// );
/// # let _ = (envoy, nginx);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct ForwardedCertificate {
    header: HeaderName,
    format: CertificateHeaderFormat,
    proxies: NetworkSet,
}

/// What the header said.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FromHeader {
    Absent,
    /// Present, from a peer that is not a trusted proxy: removed, not believed.
    Untrusted,
    /// Present and from a trusted proxy, but not a certificate.
    Malformed,
    /// The client's certificate, and the other certificates of the chain the proxy
    /// forwarded (Envoy's `Chain`), which may hold intermediates.
    Certificate(Vec<u8>, Vec<Vec<u8>>),
}

impl ForwardedCertificate {
    /// Envoy's `X-Forwarded-Client-Cert`, from proxies in `proxies`.
    pub fn envoy(proxies: NetworkSet) -> Self {
        Self {
            header: HeaderName::from_static("x-forwarded-client-cert"),
            format: CertificateHeaderFormat::EnvoyXfcc,
            proxies,
        }
    }

    /// A URL-escaped PEM in `header`, from proxies in `proxies`.
    pub fn escaped_pem(header: HeaderName, proxies: NetworkSet) -> Self {
        Self {
            header,
            format: CertificateHeaderFormat::EscapedPem,
            proxies,
        }
    }

    /// Another header name for the same format.
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }

    /// Reads the header, and removes it from the request either way, so handlers never
    /// see a client-supplied certificate header.
    pub(crate) fn take<B>(&self, request: &mut Request<B>) -> FromHeader {
        let mut values = request.headers().get_all(&self.header).iter();
        let Some(first) = values.next() else {
            return FromHeader::Absent;
        };
        let several = values.next().is_some();
        let value = first.to_str().ok().map(str::to_owned);
        request.headers_mut().remove(&self.header);
        let trusted =
            socket_peer(request.extensions()).is_some_and(|peer| self.proxies.contains(peer));
        if !trusted {
            return FromHeader::Untrusted;
        }
        let (Some(value), false) = (value, several) else {
            return FromHeader::Malformed;
        };
        let (escaped, hash, chain) = match self.format {
            CertificateHeaderFormat::EscapedPem => (Some(value.as_str()), None, None),
            CertificateHeaderFormat::EnvoyXfcc => match xfcc_cert(&value) {
                Ok(XfccCert { cert, hash, chain }) => (cert, hash, chain),
                Err(Ambiguous) => return FromHeader::Malformed,
            },
        };
        let Some(der) = escaped.and_then(pem_to_der) else {
            return FromHeader::Malformed;
        };
        // Envoy's `Hash` is the SHA-256 of the certificate's DER: an element whose hash
        // and certificate disagree names two certificates, and is refused.
        if let Some(hash) = hash {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
            let matches = hex::decode(hash).is_ok_and(|given| given == digest.as_ref());
            if !matches {
                return FromHeader::Malformed;
            }
        }
        // `Chain`: the whole chain as PEM, leaf included. The other certificates may be
        // intermediates for the CA check; a chain that cannot be read is refused.
        let others = match chain {
            None => Vec::new(),
            Some(chain) => match pem_chain_to_der(chain) {
                Some(chain) => chain.into_iter().filter(|cert| *cert != der).collect(),
                None => return FromHeader::Malformed,
            },
        };
        FromHeader::Certificate(der, others)
    }
}

/// Every certificate of a URL-escaped PEM chain, or `None` when it holds none or
/// anything that is not a certificate.
fn pem_chain_to_der(escaped: &str) -> Option<Vec<Vec<u8>>> {
    let pem = percent_decode_str(escaped).decode_utf8().ok()?;
    let mut certificates = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.ok()?;
        if block.label != "CERTIFICATE" {
            return None;
        }
        certificates.push(block.contents);
    }
    (!certificates.is_empty()).then_some(certificates)
}

/// The `Cert`, `Hash` and `Chain` of an XFCC element.
#[derive(Debug, PartialEq, Eq)]
struct XfccCert<'a> {
    cert: Option<&'a str>,
    hash: Option<&'a str>,
    chain: Option<&'a str>,
}

/// An XFCC value that is not one reading: `Cert` or `Hash` given twice, or a quoted
/// string left open.
#[derive(Debug, PartialEq, Eq)]
struct Ambiguous;

/// The certificate of a URL-escaped PEM: exactly one `CERTIFICATE` block, with nothing
/// but whitespace around it (RFC 7468's strict form), or `None`.
///
/// Read here rather than with x509-parser's PEM reader, which skips text before the
/// block, ignores the `END` line's label and stops after the first block: a value with
/// two certificates, or one glued to other text, would be read as whichever comes first.
fn pem_to_der(escaped: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let pem = percent_decode_str(escaped).decode_utf8().ok()?;
    let body = pem
        .trim_matches(|c: char| c.is_ascii_whitespace())
        .strip_prefix(BEGIN)?
        .strip_suffix(END)?;
    // Base64 lines only: another block's boundary, or anything else, is refused by the
    // decoder.
    let body: String = body.split_ascii_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// The `Cert` and `Hash` values of the last XFCC element (the one the nearest proxy
/// added). A key given twice in the element is refused rather than read either way.
fn xfcc_cert(value: &str) -> Result<XfccCert<'_>, Ambiguous> {
    let mut found = XfccCert {
        cert: None,
        hash: None,
        chain: None,
    };
    let Some(element) = split_outside_quotes(value, ',').ok_or(Ambiguous)?.pop() else {
        return Ok(found);
    };
    for (key, value) in split_outside_quotes(element, ';')
        .ok_or(Ambiguous)?
        .into_iter()
        .filter_map(|pair| pair.split_once('='))
    {
        let slot = match key.trim() {
            key if key.eq_ignore_ascii_case("cert") => &mut found.cert,
            key if key.eq_ignore_ascii_case("hash") => &mut found.hash,
            key if key.eq_ignore_ascii_case("chain") => &mut found.chain,
            _ => continue,
        };
        if slot.replace(value.trim().trim_matches('"')).is_some() {
            return Err(Ambiguous);
        }
    }
    Ok(found)
}

/// Splits at `separator` outside quoted strings. A quote left open (or an escape at the
/// very end) makes the value malformed: `None`, never a guess at where it ends.
fn split_outside_quotes(text: &str, separator: char) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (at, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&text[start..at]);
                start = at + c.len_utf8();
            }
            _ => {}
        }
    }
    if quoted || escaped {
        return None;
    }
    parts.push(&text[start..]);
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cert_of_the_last_xfcc_element() {
        let value = r#"By=spiffe://a;Cert="first";URI=x,By=spiffe://b;Hash=ab;Cert="second%2C;x";Subject="CN=a,O=b""#;
        assert_eq!(
            xfcc_cert(value),
            Ok(XfccCert {
                cert: Some("second%2C;x"),
                hash: Some("ab"),
                chain: None
            })
        );
        assert_eq!(
            xfcc_cert(r#"Cert="c";Chain="a,b;c""#).unwrap().chain,
            Some("a,b;c")
        );
        assert_eq!(xfcc_cert(r#"Chain=a;Cert=c;chain=b"#), Err(Ambiguous));
        assert_eq!(xfcc_cert("By=x;Hash=y").unwrap().cert, None);
        assert_eq!(
            xfcc_cert(r#"Subject="a,b";cert=c"#).unwrap().cert,
            Some("c")
        );
        assert_eq!(xfcc_cert("Cert=a;CERT=b"), Err(Ambiguous));
        assert_eq!(xfcc_cert("Hash=a;Cert=b;hash=a"), Err(Ambiguous));
        // Found by fuzzing: a quote left open hid a later `Hash` inside "the value".
        assert_eq!(xfcc_cert(r#"Cert=b;x="y;Hash=h"#), Err(Ambiguous));
        assert_eq!(xfcc_cert(r#"Cert=b;x="y\"#), Err(Ambiguous));
    }

    #[test]
    fn escaped_pem_decodes_only_certificates() {
        assert!(pem_to_der("not pem").is_none());
        assert!(pem_to_der(
            "-----BEGIN%20PRIVATE%20KEY-----%0AAAAA%0A-----END%20PRIVATE%20KEY-----%0A"
        )
        .is_none());
    }
}
