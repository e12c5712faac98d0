//! The client address a request is counted under (lockout, audit tags).
//!
//! It is the connection's peer address, unless that peer is one of the
//! operator's trusted proxies (`CORDON_TRUSTED_PROXIES`): then it is read
//! from the header those proxies set (`X-Forwarded-For` by default, or
//! `Forwarded`), walking from its right end, which the nearest proxy wrote,
//! past every trusted hop, to the first address no trusted proxy vouches
//! for. A client can put anything at the left end of the header; it can
//! never get past a trusted proxy's own entry, and an address from a peer
//! that is not trusted is never read from a header at all.

use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;

/// One trusted address range, `addr/bits` (a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    bits: u8,
}

impl IpRange {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, unmapped(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(u32::from(net)) << 96,
                u128::from(u32::from(ip)) << 96,
                self.bits,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), self.bits)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, bits: u8) -> bool {
    let mask = if bits == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(bits))
    };
    a & mask == b & mask
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, bits) = match text.split_once('/') {
            Some((addr, bits)) => (addr, Some(bits)),
            None => (text, None),
        };
        let network = unmapped(
            addr.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("`{text}` is not an address or address/bits"))?,
        );
        let max = if network.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(bits) => bits
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { network, bits })
    }
}

/// Which header the trusted proxies write the client's address into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

impl FromStr for ClientHeader {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(Self::XForwardedFor),
            "forwarded" => Ok(Self::Forwarded),
            other => Err(format!(
                "`{other}` is neither `x-forwarded-for` nor `forwarded`"
            )),
        }
    }
}

/// The operator's trusted proxies and the header they set.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    ranges: Vec<IpRange>,
    header: ClientHeader,
}

impl TrustedProxies {
    /// Proxies in `ranges` that write `header`; no ranges: trust none.
    pub fn new(ranges: Vec<IpRange>, header: ClientHeader) -> Self {
        Self { ranges, header }
    }

    /// Parses a comma-separated list of addresses and ranges.
    pub fn parse_ranges(list: &str) -> Result<Vec<IpRange>, String> {
        list.split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(IpRange::from_str)
            .collect()
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|range| range.contains(ip))
    }

    /// The client address of a request that came from `peer` with `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = unmapped(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let hops = match self.header {
            ClientHeader::XForwardedFor => header_values(headers, "x-forwarded-for")
                .flat_map(|value| value.split(','))
                .map(|hop| hop.trim().parse::<IpAddr>().ok())
                .collect::<Vec<_>>(),
            ClientHeader::Forwarded => header_values(headers, "forwarded")
                .flat_map(|value| value.split(','))
                .map(forwarded_for)
                .collect(),
        };
        // From the right: the nearest hop first. The address a trusted hop
        // wrote is believed; the first untrusted one is the client. An entry
        // that is no address ends the walk at the hop that wrote it.
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            match hop.map(unmapped) {
                Some(ip) => {
                    client = ip;
                    if !self.trusts(ip) {
                        break;
                    }
                }
                None => break,
            }
        }
        client
    }
}

fn header_values<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
}

/// The address in the `for=` parameter of one `Forwarded` element, if it
/// names one (`for=192.0.2.1`, `for="[2001:db8::1]:4711"`; not `unknown` or
/// an obfuscated name).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim().trim_matches('"'))
    })?;
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    value
        .parse()
        .ok()
        .or_else(|| value.rsplit_once(':')?.0.parse().ok())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("literal address")
    }

    fn headers(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(name, HeaderValue::from_str(value).expect("ASCII"));
        }
        map
    }

    fn proxies(list: &str, header: ClientHeader) -> TrustedProxies {
        TrustedProxies::new(TrustedProxies::parse_ranges(list).expect("valid"), header)
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_its_headers_say() {
        let none = TrustedProxies::default();
        let h = headers("x-forwarded-for", &["203.0.113.7"]);
        assert_eq!(none.client_ip(ip("198.51.100.2"), &h), ip("198.51.100.2"));
        let some = proxies("10.0.0.0/8", ClientHeader::XForwardedFor);
        assert_eq!(some.client_ip(ip("198.51.100.2"), &h), ip("198.51.100.2"));
    }

    #[test]
    fn behind_trusted_proxies_the_first_untrusted_hop_from_the_right_is_the_client() {
        let p = proxies("10.0.0.0/8, 192.168.1.1", ClientHeader::XForwardedFor);
        // The client forged a left entry; the proxies appended the real one.
        let h = headers("x-forwarded-for", &["1.2.3.4, 203.0.113.7", "192.168.1.1"]);
        assert_eq!(p.client_ip(ip("10.1.2.3"), &h), ip("203.0.113.7"));
        // No header: the proxy itself.
        assert_eq!(
            p.client_ip(ip("10.1.2.3"), &HeaderMap::new()),
            ip("10.1.2.3")
        );
        // Garbage right of every address stops the walk at its writer.
        let h = headers("x-forwarded-for", &["203.0.113.7, not-an-address"]);
        assert_eq!(p.client_ip(ip("10.1.2.3"), &h), ip("10.1.2.3"));
    }

    #[test]
    fn forwarded_is_read_only_when_configured_and_understands_its_forms() {
        let h = headers(
            "forwarded",
            &["for=203.0.113.7;proto=https, for=\"[2001:db8::5]:4711\""],
        );
        let xff = proxies("127.0.0.1", ClientHeader::XForwardedFor);
        assert_eq!(xff.client_ip(ip("127.0.0.1"), &h), ip("127.0.0.1"));
        let fwd = proxies("127.0.0.1", ClientHeader::Forwarded);
        assert_eq!(fwd.client_ip(ip("127.0.0.1"), &h), ip("2001:db8::5"));
        let fwd = proxies("127.0.0.1, 2001:db8::/32", ClientHeader::Forwarded);
        assert_eq!(fwd.client_ip(ip("127.0.0.1"), &h), ip("203.0.113.7"));
        let h = headers("forwarded", &["for=198.51.100.9:8080"]);
        assert_eq!(fwd.client_ip(ip("127.0.0.1"), &h), ip("198.51.100.9"));
    }

    #[test]
    fn ranges_parse_and_bad_ones_are_refused() {
        assert!(TrustedProxies::parse_ranges("10.0.0.0/8, ::1, fd00::/8").is_ok());
        for bad in ["10.0.0.0/33", "nonsense", "::1/129"] {
            assert!(TrustedProxies::parse_ranges(bad).is_err(), "{bad}");
        }
        let all_v4: IpRange = "0.0.0.0/0".parse().expect("valid");
        assert!(all_v4.contains(ip("8.8.8.8")));
        assert!(!all_v4.contains(ip("2001:db8::1")));
        let mapped = ip("::ffff:10.0.0.1");
        assert!(
            "10.0.0.0/8"
                .parse::<IpRange>()
                .expect("valid")
                .contains(mapped)
        );
    }
}
