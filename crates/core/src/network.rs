//! Sets of IP networks compiled for fast membership tests.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net};

/// A set of IPv4 and IPv6 networks, compiled into sorted, merged address ranges.
///
/// Membership is a binary search over the merged ranges: `O(log n)` in the number of
/// ranges, with no allocation. Large IPv4 sets (blocklists of many thousands of
/// networks) also get an index by the top 16 address bits, so a lookup searches only
/// the few ranges of one `/16` and touches two or three cache lines instead of
/// seventeen.
///
/// Networks written as IPv4-mapped IPv6 (`::ffff:10.0.0.0/104`) are stored as the IPv4
/// network they mean (`10.0.0.0/8`), because [`ClientIp`](crate::ClientIp) normalizes
/// mapped client addresses to IPv4. A wider IPv6 network (such as `::/0`) does not
/// include IPv4 clients.
///
/// ```
/// use portcullis_core::NetworkSet;
///
/// let set = NetworkSet::parse_list("office", "10.0.0.0/8\n# a comment\n2001:db8::/32\n192.0.2.7")?;
/// assert!(set.contains("10.1.2.3".parse()?));
/// assert!(set.contains("192.0.2.7".parse()?));
/// assert!(!set.contains("192.0.2.8".parse()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NetworkSet {
    v4: Box<[(u32, u32)]>,
    v6: Box<[(u128, u128)]>,
    /// For large IPv4 sets: `v4_index[p]` is the number of ranges that start below
    /// `p << 16`, for every `/16` prefix `p` and one past the last. Empty otherwise.
    v4_index: Box<[u32]>,
}

/// Below this many IPv4 ranges a plain binary search stays in cache and the 256 KiB
/// index is not worth its memory.
const V4_INDEX_THRESHOLD: usize = 4096;

impl NetworkSet {
    /// Whether the set holds every IPv4 address or every IPv6 address (`0.0.0.0/0`,
    /// `::/0`, or networks that add up to one of them).
    pub fn covers_everything(&self) -> bool {
        self.v4
            .iter()
            .any(|&(start, end)| start == 0 && end == u32::MAX)
            || self
                .v6
                .iter()
                .any(|&(start, end)| start == 0 && end == u128::MAX)
    }

    /// A digest of the set's contents: equal sets give equal values, however they were
    /// written. Used to tell resolver configurations apart.
    pub(crate) fn fingerprint(&self, hasher: &mut impl std::hash::Hasher) {
        use std::hash::Hash;
        self.v4.hash(hasher);
        self.v6.hash(hasher);
    }

    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from networks. Host bits of a network are ignored (`10.0.0.1/8` is
    /// `10.0.0.0/8`); use [`NetworkSet::parse_list`] to have them refused instead.
    pub fn from_networks<I>(networks: I) -> Self
    where
        I: IntoIterator<Item = IpNet>,
    {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for network in networks {
            match normalize(network) {
                IpNet::V4(net) => v4.push((u32::from(net.network()), u32::from(net.broadcast()))),
                IpNet::V6(net) => v6.push((u128::from(net.network()), u128::from(net.broadcast()))),
            }
        }
        let v4 = merge(v4);
        let v4_index = if v4.len() >= V4_INDEX_THRESHOLD {
            prefix_index(&v4)
        } else {
            Box::default()
        };
        Self {
            v4,
            v6: merge(v6),
            v4_index,
        }
    }

    /// Parses a list with one address or CIDR network a line. `#` starts a comment that
    /// runs to the end of the line; blank lines are skipped. `source` names the list in
    /// errors (a file name, or a word such as `"config"`).
    ///
    /// A network with host bits set (`10.0.0.1/8`) is refused: it is usually a typo for
    /// either `10.0.0.0/8` or `10.0.0.1/32`, and the two mean very different things.
    pub fn parse_list(source: &str, text: &str) -> Result<Self, NetworkListError> {
        let mut networks = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let content = match line.find('#') {
                Some(comment) => &line[..comment],
                None => line,
            }
            .trim();
            if content.is_empty() {
                continue;
            }
            let network =
                parse_network(content).map_err(|reason| NetworkListError::InvalidLine {
                    source_name: source.to_owned(),
                    line: index + 1,
                    text: shorten(content),
                    reason,
                })?;
            networks.push(network);
        }
        Ok(Self::from_networks(networks))
    }

    /// Reads a list file in the format of [`NetworkSet::parse_list`]. Errors name the
    /// file and, for a bad entry, the line.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, NetworkListError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| NetworkListError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::parse_list(&path.display().to_string(), &text)
    }

    /// The set as the fewest CIDR networks that cover exactly its addresses, IPv4 first:
    /// what to write back to a list file.
    ///
    /// ```
    /// use portcullis_core::NetworkSet;
    ///
    /// let set: NetworkSet = "10.0.0.0/25, 10.0.0.128/25, 2001:db8::1".parse()?;
    /// let networks: Vec<String> = set.networks().map(|n| n.to_string()).collect();
    /// assert_eq!(networks, ["10.0.0.0/24", "2001:db8::1/128"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn networks(&self) -> impl Iterator<Item = IpNet> + '_ {
        let v4 = self.v4.iter().flat_map(|&(start, end)| {
            ipnet::Ipv4Subnets::new(start.into(), end.into(), 0).map(IpNet::V4)
        });
        let v6 = self.v6.iter().flat_map(|&(start, end)| {
            ipnet::Ipv6Subnets::new(start.into(), end.into(), 0).map(IpNet::V6)
        });
        v4.chain(v6)
    }

    /// Whether `ip` lies in one of the set's networks. An IPv4-mapped IPv6 address is
    /// looked up as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(ip) => self.contains_v4(u32::from(ip)),
            IpAddr::V6(ip) => in_ranges(&self.v6, u128::from(ip)),
        }
    }

    fn contains_v4(&self, ip: u32) -> bool {
        if self.v4_index.is_empty() {
            return in_ranges(&self.v4, ip);
        }
        // Every range starting below this /16 lies before `first`, every range starting
        // in it lies in `first..last`: the answer is the last range starting at or
        // below `ip`, found in that small slice, or the range just before it.
        let prefix = (ip >> 16) as usize;
        let first = self.v4_index[prefix] as usize;
        let last = self.v4_index[prefix + 1] as usize;
        let after = first + self.v4[first..last].partition_point(|&(start, _)| start <= ip);
        after > 0 && self.v4[after - 1].1 >= ip
    }

    /// Whether the set has no network at all.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// The number of disjoint address ranges left after merging adjacent and
    /// overlapping networks.
    pub fn range_count(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

impl FromIterator<IpNet> for NetworkSet {
    fn from_iter<I: IntoIterator<Item = IpNet>>(iter: I) -> Self {
        Self::from_networks(iter)
    }
}

impl FromIterator<IpAddr> for NetworkSet {
    fn from_iter<I: IntoIterator<Item = IpAddr>>(iter: I) -> Self {
        Self::from_networks(iter.into_iter().map(IpNet::from))
    }
}

impl FromStr for NetworkSet {
    type Err = NetworkListError;

    /// Parses a list in the format of [`NetworkSet::parse_list`]; commas separate
    /// entries as well as newlines, so `"10.0.0.0/8, 192.0.2.1"` works.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_list("inline list", &s.replace(',', "\n"))
    }
}

impl fmt::Debug for NetworkSet {
    // A blocklist may hold 100,000 entries: print its size, not its contents.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetworkSet")
            .field("ipv4_ranges", &self.v4.len())
            .field("ipv6_ranges", &self.v6.len())
            .finish()
    }
}

/// Why an entry of a network list was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidNetwork {
    /// Neither an IP address nor a CIDR network.
    NotAnAddress,
    /// A CIDR network with bits set after the prefix, such as `10.0.0.1/8`.
    HostBitsSet,
    /// More than one entry on a line.
    TrailingText,
}

impl fmt::Display for InvalidNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotAnAddress => "is not an IP address or CIDR network (such as 192.0.2.0/24 or 2001:db8::/32)",
            Self::HostBitsSet => "has host bits set after the prefix: write the network address (10.0.0.0/8), or a single host with /32 or /128",
            Self::TrailingText => "has more than one entry: write one address or network a line",
        })
    }
}

/// An error reading or parsing a network list.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkListError {
    /// The file could not be read.
    #[error("cannot read network list {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        error: io::Error,
    },
    /// An entry is not an address or network.
    #[error("{source_name}:{line}: `{text}` {reason}")]
    InvalidLine {
        /// The file name or the name given to [`NetworkSet::parse_list`].
        source_name: String,
        /// The line, counting from 1.
        line: usize,
        /// The entry as written (shortened when long).
        text: String,
        /// Why it was refused.
        reason: InvalidNetwork,
    },
}

fn parse_network(entry: &str) -> Result<IpNet, InvalidNetwork> {
    if entry.split_whitespace().nth(1).is_some() {
        return Err(InvalidNetwork::TrailingText);
    }
    if let Some((address, prefix)) = entry.split_once('/') {
        // The address is read by the standard parser, which refuses an IPv4 octet with
        // a leading zero (`010.0.0.0`: octal to some readers, decimal to others), so the
        // CIDR form means what the bare address would. The prefix is plain decimal.
        let address = IpAddr::from_str(address).map_err(|_| InvalidNetwork::NotAnAddress)?;
        let plain_decimal = !prefix.is_empty()
            && prefix.len() <= 3
            && prefix.bytes().all(|b| b.is_ascii_digit())
            && (prefix == "0" || !prefix.starts_with('0'));
        if !plain_decimal {
            return Err(InvalidNetwork::NotAnAddress);
        }
        let prefix: u8 = prefix.parse().map_err(|_| InvalidNetwork::NotAnAddress)?;
        let network = IpNet::new(address, prefix).map_err(|_| InvalidNetwork::NotAnAddress)?;
        if network.addr() != network.network() {
            return Err(InvalidNetwork::HostBitsSet);
        }
        Ok(network)
    } else {
        IpAddr::from_str(entry)
            .map(IpNet::from)
            .map_err(|_| InvalidNetwork::NotAnAddress)
    }
}

/// Rewrites an IPv4-mapped IPv6 network (`::ffff:0:0/96` or narrower) as IPv4.
fn normalize(network: IpNet) -> IpNet {
    const MAPPED_PREFIX: u8 = 96;
    if let IpNet::V6(net) = network {
        if net.prefix_len() >= MAPPED_PREFIX {
            if let Some(v4) = net.network().to_ipv4_mapped() {
                let prefix = net.prefix_len() - MAPPED_PREFIX;
                if let Ok(v4net) = Ipv4Net::new(v4, prefix) {
                    return IpNet::V4(v4net.trunc());
                }
            }
        }
        return IpNet::V6(net.trunc());
    }
    network.trunc()
}

/// Sorts ranges by start and joins those that overlap or touch.
fn merge<T>(mut ranges: Vec<(T, T)>) -> Box<[(T, T)]>
where
    T: Ord + Copy + Successor,
{
    ranges.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        if let Some(last) = merged.last_mut() {
            if last.1.successor().is_none_or(|next| start <= next) {
                if end > last.1 {
                    last.1 = end;
                }
                continue;
            }
        }
        merged.push((start, end));
    }
    merged.into_boxed_slice()
}

/// `index[p]` = how many ranges start below `p << 16`, for `p` in `0..=65536`.
fn prefix_index(ranges: &[(u32, u32)]) -> Box<[u32]> {
    let mut index = Vec::with_capacity(65_537);
    let mut below = 0usize;
    for prefix in 0..=65_536u64 {
        let bound = prefix << 16;
        while below < ranges.len() && u64::from(ranges[below].0) < bound {
            below += 1;
        }
        // At most 2^32 ranges of IPv4 can exist, but the count of merged ranges is
        // bounded by the input, far below u32::MAX in any real list.
        index.push(u32::try_from(below).unwrap_or(u32::MAX));
    }
    index.into_boxed_slice()
}

fn in_ranges<T: Ord + Copy>(ranges: &[(T, T)], value: T) -> bool {
    let after = ranges.partition_point(|&(start, _)| start <= value);
    after > 0 && ranges[after - 1].1 >= value
}

trait Successor: Sized {
    fn successor(self) -> Option<Self>;
}

impl Successor for u32 {
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Successor for u128 {
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
}

fn shorten(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::Ipv6Net;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn set(text: &str) -> NetworkSet {
        NetworkSet::parse_list("test", text).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn empty_set_contains_nothing() {
        let set = NetworkSet::new();
        assert!(set.is_empty());
        assert!(!set.contains(ip("0.0.0.0")));
        assert!(!set.contains(ip("::")));
    }

    #[test]
    fn single_addresses_and_networks() {
        let set = set("192.0.2.7\n10.0.0.0/8\n2001:db8::/32\n::1");
        assert!(set.contains(ip("192.0.2.7")));
        assert!(!set.contains(ip("192.0.2.6")));
        assert!(!set.contains(ip("192.0.2.8")));
        assert!(set.contains(ip("10.0.0.0")));
        assert!(set.contains(ip("10.255.255.255")));
        assert!(!set.contains(ip("11.0.0.0")));
        assert!(!set.contains(ip("9.255.255.255")));
        assert!(set.contains(ip("2001:db8:ffff::1")));
        assert!(!set.contains(ip("2001:db9::")));
        assert!(set.contains(ip("::1")));
        assert!(!set.contains(ip("::2")));
    }

    #[test]
    fn families_do_not_mix() {
        let set = set("0.0.0.0/0");
        assert!(set.contains(ip("203.0.113.1")));
        assert!(!set.contains(ip("2001:db8::1")));
        let set = NetworkSet::parse_list("t", "::/0").unwrap();
        assert!(set.contains(ip("2001:db8::1")));
        assert!(!set.contains(ip("203.0.113.1")));
    }

    #[test]
    fn mapped_addresses_and_networks_are_ipv4() {
        let set = set("::ffff:10.0.0.0/104");
        assert!(set.contains(ip("10.9.9.9")));
        assert!(set.contains(ip("::ffff:10.9.9.9")));
        assert!(!set.contains(ip("11.0.0.1")));
        let set = set_from("10.0.0.0/8");
        assert!(set.contains(ip("::ffff:10.1.1.1")));
    }

    fn set_from(text: &str) -> NetworkSet {
        set(text)
    }

    #[test]
    fn extremes_of_the_address_space() {
        let set = set("255.255.255.255\n0.0.0.0\nffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
        assert!(set.contains(ip("255.255.255.255")));
        assert!(set.contains(ip("0.0.0.0")));
        assert!(!set.contains(ip("0.0.0.1")));
        assert!(set.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
    }

    #[test]
    fn overlapping_and_adjacent_networks_merge() {
        let set = set("10.0.0.0/9\n10.128.0.0/9\n10.1.0.0/16\n192.0.2.0/25\n192.0.2.128/25");
        assert_eq!(set.range_count(), 2);
        assert!(set.contains(ip("10.200.0.1")));
        assert!(set.contains(ip("192.0.2.255")));
    }

    #[test]
    fn large_sets_are_indexed_small_ones_not() {
        assert!(set("10.0.0.0/8").v4_index.is_empty());
        let big = NetworkSet::from_networks(
            (0..5000u32).map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(i << 12), 20).unwrap())),
        );
        // Adjacent /20s merge into one range: make them disjoint instead.
        assert_eq!(big.range_count(), 1);
        let big = NetworkSet::from_networks(
            (0..5000u32).map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(i << 13), 20).unwrap())),
        );
        assert_eq!(big.range_count(), 5000);
        assert_eq!(big.v4_index.len(), 65_537);
        assert!(big.contains(ip("0.0.0.0")));
        assert!(big.contains(ip("0.0.15.255")));
        assert!(!big.contains(ip("0.0.16.0")));
        assert!(big.contains(ip("0.0.32.1")));
        assert!(!big.contains(ip("255.255.255.255")));
        assert!(big.contains(ip(&Ipv4Addr::from(4999u32 << 13).to_string())));
    }

    #[test]
    fn comments_and_blank_lines() {
        let set = set("# header\n\n   10.0.0.0/8   # office\n\t\n192.0.2.1#inline");
        assert!(set.contains(ip("10.0.0.1")));
        assert!(set.contains(ip("192.0.2.1")));
        assert_eq!(set.range_count(), 2);
    }

    #[test]
    fn bad_lines_name_the_source_and_line() {
        let err =
            NetworkSet::parse_list("blocklist.txt", "10.0.0.0/8\n\n# x\nnot-an-ip\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "blocklist.txt:4: `not-an-ip` is not an IP address or CIDR network (such as 192.0.2.0/24 or 2001:db8::/32)"
        );
        match err {
            NetworkListError::InvalidLine { line, reason, .. } => {
                assert_eq!(line, 4);
                assert_eq!(reason, InvalidNetwork::NotAnAddress);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn refuses_host_bits_prefix_overflow_and_two_entries() {
        for (text, reason) in [
            ("10.0.0.1/8", InvalidNetwork::HostBitsSet),
            ("2001:db8::1/32", InvalidNetwork::HostBitsSet),
            ("10.0.0.0/33", InvalidNetwork::NotAnAddress),
            ("::/129", InvalidNetwork::NotAnAddress),
            ("10.0.0.0/", InvalidNetwork::NotAnAddress),
            ("10.0.0", InvalidNetwork::NotAnAddress),
            ("256.0.0.1", InvalidNetwork::NotAnAddress),
            ("10.0.0.1 10.0.0.2", InvalidNetwork::TrailingText),
            ("[::1]", InvalidNetwork::NotAnAddress),
        ] {
            match NetworkSet::parse_list("t", text) {
                Err(NetworkListError::InvalidLine {
                    reason: got,
                    line: 1,
                    ..
                }) => {
                    assert_eq!(got, reason, "{text}")
                }
                other => panic!("{text}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn long_bad_entries_are_shortened_in_errors() {
        let long = "x".repeat(500);
        let err = NetworkSet::parse_list("t", &long).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
    }

    #[test]
    fn from_file_reports_missing_file() {
        let err = NetworkSet::from_file("/nonexistent/portcullis/list.txt").unwrap_err();
        assert!(matches!(err, NetworkListError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/portcullis/list.txt"));
    }

    #[test]
    fn from_str_accepts_commas() {
        let set: NetworkSet = "10.0.0.0/8, 192.0.2.1".parse().unwrap();
        assert!(set.contains(ip("192.0.2.1")));
        assert!(set.contains(ip("10.3.3.3")));
    }

    #[test]
    fn debug_prints_sizes_only() {
        let set = set("10.0.0.0/8\n2001:db8::/32");
        assert_eq!(
            format!("{set:?}"),
            "NetworkSet { ipv4_ranges: 1, ipv6_ranges: 1 }"
        );
    }

    fn arb_v4net() -> impl Strategy<Value = IpNet> {
        (any::<u32>(), 0u8..=32).prop_map(|(addr, len)| {
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap().trunc())
        })
    }

    fn arb_v6net() -> impl Strategy<Value = IpNet> {
        (any::<u128>(), 0u8..=128).prop_map(|(addr, len)| {
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(addr), len).unwrap().trunc())
        })
    }

    fn arb_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
            any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        ]
    }

    proptest! {
        // Each case builds a 256 KiB index: fewer cases keep the debug test fast.
        #![proptest_config(ProptestConfig::with_cases(24))]

        // The /16 index of large sets answers exactly like the plain binary search.
        #[test]
        fn indexed_lookup_agrees(
            seed_nets in proptest::collection::vec((any::<u32>(), 8u8..=32), 1..64),
            probes in proptest::collection::vec(any::<u32>(), 1..64),
        ) {
            // Pad with many small networks so the set is large enough to be indexed.
            let nets = seed_nets
                .iter()
                .map(|&(a, l)| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), l).unwrap().trunc()))
                .chain((0..V4_INDEX_THRESHOLD as u32).map(|i| {
                    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(i.wrapping_mul(2_654_435_761)), 32).unwrap())
                }));
            let set = NetworkSet::from_networks(nets);
            prop_assume!(!set.v4_index.is_empty());
            for probe in probes.into_iter().chain(set.v4.iter().flat_map(|&(s, e)| [s, e, s.wrapping_sub(1), e.wrapping_add(1)])) {
                prop_assert_eq!(set.contains_v4(probe), in_ranges(&set.v4, probe), "probe {}", Ipv4Addr::from(probe));
            }
        }
    }

    proptest! {
        // The compiled set agrees with a linear scan over the networks as given.
        #[test]
        fn contains_agrees_with_linear_scan(
            nets in proptest::collection::vec(prop_oneof![arb_v4net(), arb_v6net()], 0..40),
            probes in proptest::collection::vec(arb_ip(), 1..40),
        ) {
            let set = NetworkSet::from_networks(nets.iter().copied());
            for probe in probes.iter().copied().chain(nets.iter().flat_map(|n| {
                // Probe both edges of every network and the addresses just outside.
                let (lo, hi) = (n.network(), n.broadcast());
                let outside = match (lo, hi) {
                    (IpAddr::V4(lo), IpAddr::V4(hi)) => vec![
                        u32::from(lo).checked_sub(1).map(|x| IpAddr::V4(x.into())),
                        u32::from(hi).checked_add(1).map(|x| IpAddr::V4(x.into())),
                    ],
                    (IpAddr::V6(lo), IpAddr::V6(hi)) => vec![
                        u128::from(lo).checked_sub(1).map(|x| IpAddr::V6(x.into())),
                        u128::from(hi).checked_add(1).map(|x| IpAddr::V6(x.into())),
                    ],
                    _ => vec![],
                };
                [Some(lo), Some(hi)].into_iter().chain(outside).flatten()
            })) {
                let expected = nets.iter().any(|n| normalize(*n).contains(&probe.to_canonical()));
                prop_assert_eq!(set.contains(probe), expected, "probe {}", probe);
            }
        }

        // Whatever the input text, parsing returns a value or an error and never panics.
        #[test]
        fn parse_list_never_panics(text in "\\PC{0,200}") {
            let _ = NetworkSet::parse_list("fuzz", &text);
        }

        // Every network written out in canonical form parses back to the same set.
        #[test]
        fn written_lists_parse_back(nets in proptest::collection::vec(prop_oneof![arb_v4net(), arb_v6net()], 0..30)) {
            let text: String = nets.iter().map(|n| format!("{n}\n")).collect();
            let parsed = NetworkSet::parse_list("t", &text).unwrap();
            prop_assert_eq!(parsed, NetworkSet::from_networks(nets));
        }
    }

    #[test]
    fn one_spelling_of_a_network() {
        for bad in [
            "010.0.0.0/8",
            "10.0.0.010/32",
            "010.0.0.1",
            "10.0.0.0/08",
            "10.0.0.0/+8",
            "10.0.0.0/",
            "10.0.0.0/8/8",
            "10.0.0.0/33",
            "2001:db8::/0129",
            "2001:db8::/ 32",
            "10.0.0.0 /8",
            "0x0a.0.0.0/8",
            "10.0/8",
        ] {
            assert!(NetworkSet::parse_list("t", bad).is_err(), "{bad}");
        }
        for good in [
            "10.0.0.0/8",
            "0.0.0.0/0",
            "192.0.2.1/32",
            "2001:db8::/32",
            "::/0",
            "10.0.0.0",
        ] {
            assert!(NetworkSet::parse_list("t", good).is_ok(), "{good}");
        }
        let set = NetworkSet::parse_list("t", "10.0.0.0/8").unwrap();
        assert!(set.contains("10.1.2.3".parse().unwrap()));
        assert!(
            !set.contains("8.0.0.1".parse().unwrap()),
            "never read as octal"
        );
    }
}
