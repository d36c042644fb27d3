//! A PROXY protocol header: framed here (how many bytes belong to it), parsed by `ppp`,
//! and turned into owned, checked values.

use std::net::{IpAddr, SocketAddr};

use ppp::v1;
use ppp::v2;

/// The text header's signature.
const V1_SIGNATURE: &[u8] = b"PROXY ";
/// The binary header's signature.
const V2_SIGNATURE: &[u8] = v2::PROTOCOL_PREFIX;
/// The longest text header the specification allows, CRLF included.
const V1_MAX: usize = 107;
/// The binary header's fixed part: signature, version and command, family and
/// protocol, length.
const V2_FIXED: usize = 16;
/// The longest unique id a balancer may send (specification: 128 bytes).
const UNIQUE_ID_MAX: usize = 128;

/// The most bytes a header may have unless the host says otherwise: a v2 header with
/// IPv6 addresses and a few hundred bytes of TLVs fits; the protocol's own maximum is
/// 65,551 bytes.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 4096;

/// Which version of the protocol a header used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// The text header (`PROXY TCP4 …\r\n`).
    V1,
    /// The binary header.
    V2,
}

/// What the balancer says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// A client's connection, relayed: the source address is the client.
    Proxy,
    /// The balancer's own connection (a health check; v1 `UNKNOWN` too): the socket
    /// peer is the one to use.
    Local,
}

/// The TLS facts a balancer that terminated TLS passes on (v2 TLV `PP2_TYPE_SSL`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SslInfo {
    /// The client connected over TLS (`PP2_CLIENT_SSL`).
    pub client_ssl: bool,
    /// The client presented a certificate on this connection (`PP2_CLIENT_CERT_CONN`).
    pub client_cert_connection: bool,
    /// The client presented a certificate at least once in this TLS session
    /// (`PP2_CLIENT_CERT_SESS`).
    pub client_cert_session: bool,
    /// The balancer verified the client's certificate (`verify` is 0).
    pub verified: bool,
    /// The TLS version (`TLSv1.3`).
    pub version: Option<String>,
    /// The client certificate's subject common name.
    pub common_name: Option<String>,
    /// The cipher (`ECDHE-RSA-AES128-GCM-SHA256`).
    pub cipher: Option<String>,
    /// The certificate's signature algorithm.
    pub signature_algorithm: Option<String>,
    /// The certificate's key algorithm.
    pub key_algorithm: Option<String>,
}

/// One v2 TLV as sent: its type and value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tlv {
    /// The type (`0x01` ALPN, `0x02` authority, `0xEA` AWS, …).
    pub kind: u8,
    /// The value.
    pub value: Vec<u8>,
}

/// A parsed PROXY protocol header.
///
/// ```
/// use portcullis_proxy_protocol::{ProxyHeader, Command};
///
/// let bytes = b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\nGET / HTTP/1.1\r\n";
/// let (header, length) = ProxyHeader::parse(bytes, 4096)?.expect("a whole header");
/// assert_eq!(header.command, Command::Proxy);
/// assert_eq!(header.source, Some("203.0.113.7:51000".parse()?));
/// // The request starts right after the header.
/// assert!(bytes[length..].starts_with(b"GET /"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyHeader {
    /// Text or binary.
    pub version: Version,
    /// A relayed connection or the balancer's own.
    pub command: Command,
    /// The client, for a relayed TCP connection over IPv4 or IPv6; `None` for a local
    /// connection, `UNKNOWN`, UNIX sockets, UDP or an unspecified family (the socket
    /// peer is then the one to use, as the specification says).
    pub source: Option<SocketAddr>,
    /// The address the client connected to, when `source` is known.
    pub destination: Option<SocketAddr>,
    /// The protocol the client negotiated (TLV `PP2_TYPE_ALPN`).
    pub alpn: Option<Vec<u8>>,
    /// The host name the client asked for (TLV `PP2_TYPE_AUTHORITY`, SNI).
    pub authority: Option<String>,
    /// The balancer's id for the connection (TLV `PP2_TYPE_UNIQUE_ID`).
    pub unique_id: Option<Vec<u8>>,
    /// TLS facts, when the balancer terminated TLS (TLV `PP2_TYPE_SSL`).
    pub ssl: Option<SslInfo>,
    /// The network namespace (TLV `PP2_TYPE_NETNS`).
    pub netns: Option<String>,
    /// Every TLV as sent, those above included, in order (`PP2_TYPE_NOOP` left out),
    /// for vendor types such as AWS's VPC endpoint id (`0xEA`).
    pub tlvs: Vec<Tlv>,
}

/// Why bytes are not an acceptable PROXY protocol header. Every refusal has a name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The bytes start with neither signature.
    #[error("the connection does not start with a PROXY protocol header")]
    NotProxyProtocol,
    /// Longer than allowed: 107 bytes for v1, the configured maximum for v2.
    #[error("the PROXY protocol header is longer than {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// A v1 header that does not follow the grammar.
    #[error("malformed PROXY protocol v1 header: {0}")]
    V1(String),
    /// A v2 header whose fixed part or addresses do not follow the specification.
    #[error("malformed PROXY protocol v2 header: {0}")]
    V2(String),
    /// A TLV that overruns the header, or a known TLV whose value is malformed.
    #[error("malformed PROXY protocol v2 TLV: {0}")]
    Tlv(String),
    /// The header carries a CRC32C TLV that does not match its bytes.
    #[error("the PROXY protocol v2 header's CRC32C checksum does not match")]
    Checksum,
}

impl ProxyHeader {
    /// Reads a header from the start of `bytes`. `Ok(None)`: the bytes so far are the
    /// start of a header, and more are needed. `Ok(Some((header, length)))`: the header
    /// is the first `length` bytes; what follows belongs to the application. A v2
    /// header longer than `max_header_bytes` is refused as soon as its length field
    /// is read.
    pub fn parse(
        bytes: &[u8],
        max_header_bytes: usize,
    ) -> Result<Option<(Self, usize)>, HeaderError> {
        match frame(bytes, max_header_bytes)? {
            Frame::Incomplete => Ok(None),
            Frame::V1(length) => Ok(Some((parse_v1(&bytes[..length])?, length))),
            Frame::V2(length) => Ok(Some((parse_v2(&bytes[..length])?, length))),
        }
    }

    /// The address to use for the connection: the client's for a relayed connection
    /// with a known source, the socket peer's otherwise.
    pub fn client_or(&self, socket_peer: SocketAddr) -> SocketAddr {
        match (self.command, self.source) {
            (Command::Proxy, Some(source)) => source,
            _ => socket_peer,
        }
    }
}

/// How much of a buffer a header takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// More bytes are needed to know.
    Incomplete,
    /// A v1 header of this many bytes (CRLF included).
    V1(usize),
    /// A v2 header of this many bytes.
    V2(usize),
}

/// Which signature the bytes start with, if they are long enough to tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signature {
    /// Too few bytes: they are the start of a signature.
    Undecided,
    V1,
    V2,
    /// Not a PROXY protocol header.
    Neither,
}

pub(crate) fn signature(bytes: &[u8]) -> Signature {
    let starts = |signature: &[u8]| {
        let n = bytes.len().min(signature.len());
        bytes[..n] == signature[..n]
    };
    match (starts(V1_SIGNATURE), starts(V2_SIGNATURE)) {
        (true, _) if bytes.len() >= V1_SIGNATURE.len() => Signature::V1,
        (_, true) if bytes.len() >= V2_SIGNATURE.len() => Signature::V2,
        (true, _) | (_, true) => Signature::Undecided,
        (false, false) => Signature::Neither,
    }
}

pub(crate) fn frame(bytes: &[u8], max_header_bytes: usize) -> Result<Frame, HeaderError> {
    match signature(bytes) {
        Signature::Undecided => Ok(Frame::Incomplete),
        Signature::Neither => Err(HeaderError::NotProxyProtocol),
        Signature::V1 => {
            let window = &bytes[..bytes.len().min(V1_MAX)];
            match window.iter().position(|&b| b == b'\n') {
                Some(newline) => Ok(Frame::V1(newline + 1)),
                None if bytes.len() >= V1_MAX => Err(HeaderError::TooLong { max: V1_MAX }),
                None => Ok(Frame::Incomplete),
            }
        }
        Signature::V2 => {
            if bytes.len() < V2_FIXED {
                return Ok(Frame::Incomplete);
            }
            if bytes[12] >> 4 != 2 {
                return Err(HeaderError::V2(format!(
                    "version {} (only 2 exists)",
                    bytes[12] >> 4
                )));
            }
            let length = V2_FIXED + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
            let max = max_header_bytes.max(V2_FIXED);
            if length > max {
                return Err(HeaderError::TooLong { max });
            }
            match bytes.len() >= length {
                true => Ok(Frame::V2(length)),
                false => Ok(Frame::Incomplete),
            }
        }
    }
}

fn parse_v1(bytes: &[u8]) -> Result<ProxyHeader, HeaderError> {
    // ppp reads up to the first CR; a lone LF (or a CR elsewhere) is refused here, so
    // that exactly one reading of the line exists.
    if !bytes.ends_with(b"\r\n") || bytes[..bytes.len() - 2].contains(&b'\r') {
        return Err(HeaderError::V1(
            "a v1 header ends with CRLF and has no other CR or LF".into(),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| HeaderError::V1("not ASCII".into()))?;
    if !text.is_ascii() {
        return Err(HeaderError::V1("not ASCII".into()));
    }
    let header = v1::Header::try_from(text).map_err(|e| HeaderError::V1(e.to_string()))?;
    let (command, addresses) = match header.addresses {
        v1::Addresses::Unknown => (Command::Local, None),
        v1::Addresses::Tcp4(a) => (
            Command::Proxy,
            Some(pair(
                a.source_address.into(),
                a.source_port,
                a.destination_address.into(),
                a.destination_port,
            )),
        ),
        v1::Addresses::Tcp6(a) => (
            Command::Proxy,
            Some(pair(
                a.source_address.into(),
                a.source_port,
                a.destination_address.into(),
                a.destination_port,
            )),
        ),
    };
    Ok(ProxyHeader::bare(Version::V1, command, addresses))
}

fn parse_v2(bytes: &[u8]) -> Result<ProxyHeader, HeaderError> {
    let header = v2::Header::try_from(bytes).map_err(|e| match e {
        v2::ParseError::InvalidTLV(..) | v2::ParseError::Leftovers(_) => {
            HeaderError::Tlv(e.to_string())
        }
        other => HeaderError::V2(other.to_string()),
    })?;
    let command = match header.command {
        v2::Command::Local => Command::Local,
        v2::Command::Proxy => Command::Proxy,
    };
    // Only a relayed TCP connection names a client this listener can use.
    let stream = header.protocol == v2::Protocol::Stream;
    let addresses = match (command, stream, header.addresses) {
        (Command::Proxy, true, v2::Addresses::IPv4(a)) => Some(pair(
            a.source_address.into(),
            a.source_port,
            a.destination_address.into(),
            a.destination_port,
        )),
        (Command::Proxy, true, v2::Addresses::IPv6(a)) => Some(pair(
            a.source_address.into(),
            a.source_port,
            a.destination_address.into(),
            a.destination_port,
        )),
        _ => None,
    };
    let mut parsed = ProxyHeader::bare(Version::V2, command, addresses);
    let mut checksum = None;
    for tlv in header.tlvs() {
        let tlv = tlv.map_err(|e| HeaderError::Tlv(e.to_string()))?;
        let value = tlv.value.as_ref();
        match tlv.kind {
            0x01 => parsed.alpn = Some(once(parsed.alpn.is_some(), "ALPN", value)?.to_vec()),
            0x02 => {
                parsed.authority = Some(text(
                    once(parsed.authority.is_some(), "authority", value)?,
                    "authority",
                )?)
            }
            0x03 => {
                if checksum.is_some() || value.len() != 4 {
                    return Err(HeaderError::Tlv("CRC32C is one value of 4 bytes".into()));
                }
                checksum = Some(u32::from_be_bytes([value[0], value[1], value[2], value[3]]));
            }
            0x04 => continue,
            0x05 => {
                let id = once(parsed.unique_id.is_some(), "unique id", value)?;
                if id.len() > UNIQUE_ID_MAX {
                    return Err(HeaderError::Tlv(format!(
                        "a unique id of {} bytes (at most {UNIQUE_ID_MAX})",
                        id.len()
                    )));
                }
                parsed.unique_id = Some(id.to_vec());
            }
            0x20 => parsed.ssl = Some(ssl(once(parsed.ssl.is_some(), "SSL", value)?)?),
            0x30 => {
                parsed.netns = Some(text(
                    once(parsed.netns.is_some(), "NETNS", value)?,
                    "NETNS",
                )?)
            }
            _ => {}
        }
        parsed.tlvs.push(Tlv {
            kind: tlv.kind,
            value: value.to_vec(),
        });
    }
    if let Some(expected) = checksum {
        if crc32c_with_zeroed_checksum(bytes) != expected {
            return Err(HeaderError::Checksum);
        }
    }
    Ok(parsed)
}

impl ProxyHeader {
    /// A header with its addresses and no TLVs.
    fn bare(
        version: Version,
        command: Command,
        addresses: Option<(SocketAddr, SocketAddr)>,
    ) -> Self {
        Self {
            version,
            command,
            source: addresses.map(|(source, _)| source),
            destination: addresses.map(|(_, destination)| destination),
            alpn: None,
            authority: None,
            unique_id: None,
            ssl: None,
            netns: None,
            tlvs: Vec::new(),
        }
    }
}

/// The source and destination addresses.
fn pair(
    source: IpAddr,
    source_port: u16,
    destination: IpAddr,
    destination_port: u16,
) -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::new(source, source_port),
        SocketAddr::new(destination, destination_port),
    )
}

/// A known TLV may come once: two values for one fact would leave a reader to choose.
fn once<'a>(seen: bool, name: &str, value: &'a [u8]) -> Result<&'a [u8], HeaderError> {
    match seen {
        true => Err(HeaderError::Tlv(format!("two {name} TLVs"))),
        false => Ok(value),
    }
}

fn text(value: &[u8], name: &str) -> Result<String, HeaderError> {
    match std::str::from_utf8(value) {
        Ok(text) if !text.chars().any(char::is_control) => Ok(text.to_owned()),
        _ => Err(HeaderError::Tlv(format!(
            "the {name} TLV is not UTF-8 text without control characters"
        ))),
    }
}

/// `PP2_TYPE_SSL`: client flags (1 byte), verify result (4 bytes), then sub-TLVs.
fn ssl(value: &[u8]) -> Result<SslInfo, HeaderError> {
    let [client, v0, v1, v2, v3, rest @ ..] = value else {
        return Err(HeaderError::Tlv(
            "the SSL TLV is shorter than 5 bytes".into(),
        ));
    };
    let mut info = SslInfo {
        client_ssl: client & 0x01 != 0,
        client_cert_connection: client & 0x02 != 0,
        client_cert_session: client & 0x04 != 0,
        verified: u32::from_be_bytes([*v0, *v1, *v2, *v3]) == 0,
        ..SslInfo::default()
    };
    for sub in v2::TypeLengthValues::from(rest) {
        let sub = sub.map_err(|e| HeaderError::Tlv(format!("in the SSL TLV: {e}")))?;
        let slot = match sub.kind {
            0x21 => &mut info.version,
            0x22 => &mut info.common_name,
            0x23 => &mut info.cipher,
            0x24 => &mut info.signature_algorithm,
            0x25 => &mut info.key_algorithm,
            _ => continue,
        };
        if slot.is_some() {
            return Err(HeaderError::Tlv(format!(
                "two SSL sub-TLVs of type {:#04x}",
                sub.kind
            )));
        }
        *slot = Some(text(&sub.value, "SSL sub-TLV")?);
    }
    Ok(info)
}

/// The CRC32C (Castagnoli) of a header whose CRC32C TLV value is taken as zero, as the
/// specification computes it. Bitwise: headers are small and few (one per connection),
/// not worth a table or a dependency.
fn crc32c_with_zeroed_checksum(header: &[u8]) -> u32 {
    // Where the checksum's 4 value bytes are: found by walking the TLVs again.
    let mut zeroed = header.to_vec();
    let start = match header[13] >> 4 {
        0x1 => V2_FIXED + 12,
        0x2 => V2_FIXED + 36,
        0x3 => V2_FIXED + 216,
        _ => V2_FIXED,
    };
    let mut at = start;
    while at + 3 <= zeroed.len() {
        let length = usize::from(u16::from_be_bytes([zeroed[at + 1], zeroed[at + 2]]));
        if zeroed[at] == 0x03 && length == 4 && at + 7 <= zeroed.len() {
            zeroed[at + 3..at + 7].fill(0);
        }
        at += 3 + length;
    }
    crc32c(&zeroed)
}

fn crc32c(bytes: &[u8]) -> u32 {
    const POLY: u32 = 0x82F6_3B78; // Castagnoli, reflected
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (POLY & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
pub(crate) mod tests;
