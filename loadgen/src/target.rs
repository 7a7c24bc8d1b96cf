//! The benchmark target: a `ws://` URL parsed once, and refused unless it points at this machine.
//!
//! Load from this tool may only ever go to loopback addresses (127.0.0.0/8 or ::1), so the check
//! lives in one place that every scenario goes through before opening a single socket.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{bail, Context, Result};

/// A parsed, loopback-only WebSocket target.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given on the command line.
    pub url: String,
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `Host` header value (`host:port` as written in the URL).
    pub host_header: String,
    /// Path and query, e.g. `/ws/chat/?session_uuid=x`.
    pub path_and_query: String,
}

impl Target {
    /// Parses `ws://host[:port]/path[?query]`; refuses `wss://`, other schemes and any host that
    /// is not loopback.
    pub fn parse(url: &str) -> Result<Self> {
        let uri: hyper::Uri = url.parse().with_context(|| format!("invalid URL {url:?}"))?;
        match uri.scheme_str() {
            Some("ws") | Some("http") => {}
            Some(other) => {
                bail!("unsupported scheme {other:?} in {url:?}: only ws:// is supported")
            }
            None => bail!("URL {url:?} has no scheme; use ws://127.0.0.1:PORT/ws/chat/"),
        }
        let host = uri.host().with_context(|| format!("URL {url:?} has no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        let ip = loopback_ip(host)?;
        let path_and_query = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".to_string());
        let host_header = match uri.port_u16() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        Ok(Target {
            url: url.to_string(),
            addr: SocketAddr::new(ip, port),
            host_header,
            path_and_query,
        })
    }
}

/// Resolves a host name or literal to a loopback IP, or refuses.
fn loopback_ip(host: &str) -> Result<IpAddr> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = literal
        .parse()
        .with_context(|| format!("host {host:?} is not an IP literal or localhost; this tool only targets loopback"))?;
    if !ip.is_loopback() {
        bail!("refusing non-loopback target {ip}: this tool only sends load to 127.0.0.0/8 or ::1");
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_loopback_forms() {
        let t = Target::parse("ws://127.0.0.1:8000/ws/chat/").expect("parse");
        assert_eq!(t.addr, "127.0.0.1:8000".parse().expect("addr"));
        assert_eq!(t.path_and_query, "/ws/chat/");
        assert_eq!(t.host_header, "127.0.0.1:8000");
        assert!(Target::parse("ws://localhost:1/x?y=1").is_ok());
        assert!(Target::parse("ws://127.3.2.1:9/").is_ok());
        assert!(Target::parse("ws://[::1]:9/").is_ok());
    }

    #[test]
    fn refuses_everything_else() {
        assert!(Target::parse("ws://10.0.0.1:8000/").is_err());
        assert!(Target::parse("ws://example.com/").is_err());
        assert!(Target::parse("wss://127.0.0.1/").is_err());
        assert!(Target::parse("127.0.0.1:8000").is_err());
    }
}
