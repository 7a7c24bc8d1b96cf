//! Who the client is behind a reverse proxy: `--trusted-proxy`.
//!
//! Behind Traefik or nginx every TCP peer is the proxy, so per-IP limits,
//! the scope's `client` and the logs would all see one address. A proxy adds
//! the address it got the request from to `X-Forwarded-For` (or to
//! `Forwarded: for=…`, RFC 7239); anyone can write those headers too, so they
//! are believed only when the peer is a proxy the operator listed, and then
//! read from the right: each address a trusted proxy added is skipped, and the
//! first one that is not a trusted proxy is the client (as nginx's
//! `real_ip_recursive` does). A value that is not an address (`unknown`, an
//! obfuscated name) stops the walk at the last address we could trust.
//! `Forwarded` wins over `X-Forwarded-For` when both are present.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

/// An address block, `10.0.0.0/8` or `::1/128`; a bare address is the block
/// of just that address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("`{text}` is not an address block like 10.0.0.0/8 or ::1/128"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) => match prefix.parse::<u8>() {
                Ok(n) if n <= bits => n,
                _ => return Err(format!("`{text}`: the prefix length must be 0..={bits}")),
            },
        };
        Ok(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u128::from(u32::from(net)), u128::from(u32::from(ip)), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => masked(u128::from(net), u128::from(ip), self.prefix, 128),
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn masked(net: u128, ip: u128, prefix: u8, bits: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = u32::from(bits - prefix);
    (net >> shift) == (ip >> shift)
}

/// IPv4 peers on a dual-stack socket arrive as `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    pub fn new(blocks: Vec<Cidr>) -> TrustedProxies {
        TrustedProxies(blocks)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|block| block.contains(ip))
    }

    /// The client's address: `peer`, or — when `peer` is a trusted proxy —
    /// the address its forwarding headers name (port 0 when they give none).
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if self.0.is_empty() || !self.trusts(peer.ip()) {
            return peer;
        }
        let hops = forwarded_for(headers).unwrap_or_else(|| x_forwarded_for(headers));
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(address) = hop else {
                break;
            };
            client = *address;
            if !self.trusts(address.ip()) {
                break;
            }
        }
        SocketAddr::new(canonical(client.ip()), client.port())
    }
}

/// Every `X-Forwarded-For` address, leftmost (the original client) first.
fn x_forwarded_for(headers: &HeaderMap) -> Vec<Option<SocketAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("").split(','))
        .map(|item| node(item.trim()))
        .collect()
}

/// Every `for=` of `Forwarded` (RFC 7239), in order; `None` without the header.
fn forwarded_for(headers: &HeaderMap) -> Option<Vec<Option<SocketAddr>>> {
    let mut hops = Vec::new();
    let mut present = false;
    for value in headers.get_all(http::header::FORWARDED) {
        present = true;
        for element in value.to_str().unwrap_or("").split(',') {
            for pair in element.split(';') {
                if let Some((key, value)) = pair.split_once('=') {
                    if key.trim().eq_ignore_ascii_case("for") {
                        hops.push(node(value.trim().trim_matches('"')));
                    }
                }
            }
        }
    }
    present.then_some(hops)
}

/// A node: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]:4711`.
fn node(text: &str) -> Option<SocketAddr> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Some(address);
    }
    let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
    bare.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn trusted(blocks: &[&str]) -> TrustedProxies {
        TrustedProxies::new(blocks.iter().map(|b| Cidr::parse(b).unwrap()).collect())
    }

    const PEER: &str = "10.0.0.5:40000";

    #[test]
    fn blocks_parse_and_contain() {
        let block = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(block.contains("10.200.1.1".parse().unwrap()));
        assert!(!block.contains("11.0.0.1".parse().unwrap()));
        assert!(block.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("1.2.3.4".parse().unwrap()));
        assert!(Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains("2001:db8:ff::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "example.com", "10.0.0/8", "10.0.0.0/x", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let peer: SocketAddr = PEER.parse().unwrap();
        let spoofed = headers(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=1.2.3.4")]);
        assert_eq!(trusted(&[]).client(peer, &spoofed), peer);
        assert_eq!(trusted(&["192.168.0.0/16"]).client(peer, &spoofed), peer);
    }

    #[test]
    fn the_rightmost_untrusted_address_is_the_client() {
        let peer: SocketAddr = PEER.parse().unwrap();
        let proxies = trusted(&["10.0.0.0/8"]);
        // A client's own spoofed entry stays to the left of what the proxies add.
        let chain = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.9")]);
        assert_eq!(proxies.client(peer, &chain).ip().to_string(), "203.0.113.7");
        let split = headers(&[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "203.0.113.8")]);
        assert_eq!(proxies.client(peer, &split).ip().to_string(), "203.0.113.8");
        // Only proxies: the leftmost.
        let all = headers(&[("x-forwarded-for", "10.1.1.1, 10.2.2.2")]);
        assert_eq!(proxies.client(peer, &all).ip().to_string(), "10.1.1.1");
        // Garbage stops the walk at the last address a trusted hop gave.
        let garbage = headers(&[("x-forwarded-for", "203.0.113.9, unknown, 10.0.0.7")]);
        assert_eq!(proxies.client(peer, &garbage).ip().to_string(), "10.0.0.7");
        // No header: the peer.
        assert_eq!(proxies.client(peer, &HeaderMap::new()), peer);
    }

    #[test]
    fn forwarded_wins_and_keeps_ports() {
        let peer: SocketAddr = PEER.parse().unwrap();
        let proxies = trusted(&["10.0.0.0/8"]);
        let both = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            (
                "forwarded",
                r#"for="[2001:db8:cafe::17]:4711";proto=https, for=10.0.0.3"#,
            ),
        ]);
        assert_eq!(proxies.client(peer, &both).to_string(), "[2001:db8:cafe::17]:4711");
        let v4 = headers(&[("forwarded", "For=192.0.2.60:8080;by=10.0.0.1")]);
        assert_eq!(proxies.client(peer, &v4).to_string(), "192.0.2.60:8080");
    }
}
