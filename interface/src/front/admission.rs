//! Admission: which WebSocket upgrades are let in at all.
//!
//! Decided before any worker hears of the connection, so a flood of upgrades
//! costs the workers nothing:
//! - the Origin allowlist: a browser names the page that opens a socket, so a
//!   page on another site cannot open sockets in a visitor's name;
//! - a ceiling on open WebSockets: each holds a file descriptor, and once the
//!   process runs out, `accept()` fails for everyone (`/healthz` included);
//! - a ceiling per client IP, so one client cannot take the whole ceiling.
//!
//! A [`Slot`] is reserved atomically when the handshake starts and released
//! when it is dropped, whichever way the handshake or the connection ends, so
//! the counts stay exact under concurrency.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{header, HeaderMap};

/// File descriptors kept free when the connection ceiling is derived from the
/// open-files limit: listener, Redis, static files, plain HTTP connections.
pub const FD_HEADROOM: u64 = 256;

/// Why an upgrade was refused; `reason` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    PerIp,
    Origin,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::PerIp => "per_ip",
            Refusal::Origin => "origin",
        }
    }
}

/// The limits and the live counts behind them.
#[derive(Debug)]
pub struct Admission {
    /// 0 = unlimited.
    max_total: usize,
    /// 0 = unlimited (and no per-IP map is kept).
    max_per_ip: usize,
    origins: Vec<OriginPattern>,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Admission {
    /// `max_total`: `None` = unlimited; `max_per_ip`: 0 = unlimited; no
    /// origins = any origin.
    pub fn new(max_total: Option<usize>, max_per_ip: usize, origins: Vec<OriginPattern>) -> Arc<Admission> {
        Arc::new(Admission {
            max_total: max_total.unwrap_or(0),
            max_per_ip,
            origins,
            total: AtomicUsize::new(0),
            per_ip: Mutex::default(),
        })
    }

    /// Whether the request's `Origin` may open a WebSocket. A request without
    /// one is not from a browser page and is allowed.
    pub fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        if self.origins.is_empty() {
            return true;
        }
        let Some(value) = headers.get(header::ORIGIN) else {
            return true;
        };
        let Ok(origin) = value.to_str() else {
            return false;
        };
        let origin = origin.trim().to_ascii_lowercase();
        self.origins.iter().any(|pattern| pattern.matches(&origin))
    }

    /// Reserves a connection for `ip`, or says which ceiling is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let reserved = self.total.fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
            (self.max_total == 0 || open < self.max_total).then_some(open + 1)
        });
        if reserved.is_err() {
            return Err(Refusal::MaxConnections);
        }
        // From here on, dropping the slot gives the reservation back.
        let mut slot = Slot {
            admission: self.clone(),
            ip: None,
        };
        if self.max_per_ip > 0 {
            let ip = ip.to_canonical();
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let open = per_ip.entry(ip).or_insert(0);
            if *open >= self.max_per_ip {
                if *open == 0 {
                    per_ip.remove(&ip);
                }
                return Err(Refusal::PerIp);
            }
            *open += 1;
            slot.ip = Some(ip);
        }
        Ok(slot)
    }

    /// Connections holding a slot.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Client addresses with at least one slot (0 when per-IP is unlimited).
    pub fn tracked_ips(&self) -> usize {
        self.per_ip
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    /// Set when the connection is counted per IP.
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut per_ip = self
                .admission
                .per_ip
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(open) = per_ip.get_mut(&ip) {
                *open -= 1;
                if *open == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        self.admission.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The ceiling used when `--max-connections` is not given: the open-files
/// soft limit (raised to the hard limit at start-up, see
/// [`raise_open_files_limit`]) minus [`FD_HEADROOM`] (at least half the
/// limit), `None` when the limit is unknown or infinite.
pub fn default_max_connections() -> Option<usize> {
    let limit = open_files_limit()?;
    let derived = limit.saturating_sub(FD_HEADROOM).max(limit / 2);
    usize::try_from(derived).ok().filter(|&n| n > 0)
}

/// Raises this process's open-files soft limit to its hard limit, as nginx
/// (`worker_rlimit_nofile`) and Go programs do: every socket is a descriptor,
/// and a distribution's default soft limit (often 1,024) would cap the
/// interface far below what the machine allows. Returns the new soft limit.
pub fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass; setrlimit only reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    #[allow(clippy::useless_conversion)] // rlim_t is not u64 on every platform
    u64::try_from(limit.rlim_cur).ok()
}

/// The soft `RLIMIT_NOFILE` of this process.
fn open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    #[allow(clippy::useless_conversion)] // rlim_t is not u64 on every platform
    u64::try_from(limit.rlim_cur).ok()
}

/// An allowed origin: exact (`https://app.example.com`, port included if
/// not the default) or every subdomain of a domain (`https://*.example.com`,
/// not the domain itself). Scheme and host compare case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    Exact(String),
    /// `scheme://*.rest`, kept as `prefix` = `scheme://` and `suffix` = `.rest`.
    Subdomains {
        prefix: String,
        suffix: String,
    },
}

impl OriginPattern {
    pub fn parse(text: &str) -> Result<OriginPattern, String> {
        let lower = text.trim().to_ascii_lowercase();
        let shape = "an origin is scheme://host[:port], e.g. https://example.com or https://*.example.com";
        let Some((scheme, authority)) = lower.split_once("://") else {
            return Err(format!("`{text}` has no scheme; {shape}"));
        };
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        if !scheme_ok || authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
            return Err(format!("`{text}` is not an origin; {shape}"));
        }
        if let Some(rest) = authority.strip_prefix("*.") {
            if rest.is_empty() || rest.starts_with('.') || rest.contains('*') {
                return Err(format!(
                    "`{text}`: a wildcard needs a domain after it (https://*.example.com)"
                ));
            }
            return Ok(OriginPattern::Subdomains {
                prefix: format!("{scheme}://"),
                suffix: format!(".{rest}"),
            });
        }
        if authority.contains('*') {
            return Err(format!(
                "`{text}`: a wildcard may only be the first label (https://*.example.com)"
            ));
        }
        Ok(OriginPattern::Exact(lower))
    }

    /// `origin` is the lower-cased header value.
    pub fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Exact(exact) => origin == exact,
            OriginPattern::Subdomains { prefix, suffix } => origin
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.strip_suffix(suffix.as_str()))
                .is_some_and(|labels| {
                    !labels.is_empty()
                        && labels.split('.').all(|label| {
                            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        })
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    fn headers(origin: Option<&str>) -> HeaderMap {
        let mut map = HeaderMap::new();
        if let Some(origin) = origin {
            map.insert(header::ORIGIN, HeaderValue::from_str(origin).expect("test header"));
        }
        map
    }

    #[test]
    fn total_ceiling_refuses_then_frees_on_drop() {
        let admission = Admission::new(Some(2), 0, Vec::new());
        let a = admission.admit(ip("10.0.0.1")).expect("first");
        let _b = admission.admit(ip("10.0.0.2")).expect("second");
        assert_eq!(admission.admit(ip("10.0.0.3")).unwrap_err(), Refusal::MaxConnections);
        assert_eq!(admission.open(), 2);
        drop(a);
        assert_eq!(admission.open(), 1);
        assert!(admission.admit(ip("10.0.0.3")).is_ok());
        assert_eq!(admission.tracked_ips(), 0, "no per-IP map without a per-IP limit");
    }

    #[test]
    fn unlimited_still_counts() {
        let admission = Admission::new(None, 0, Vec::new());
        let slots: Vec<Slot> = (0..100)
            .map(|_| admission.admit(ip("10.0.0.1")).expect("admit"))
            .collect();
        assert_eq!(admission.open(), 100);
        drop(slots);
        assert_eq!(admission.open(), 0);
    }

    #[test]
    fn per_ip_ceiling_and_no_leak() {
        let admission = Admission::new(Some(10), 2, Vec::new());
        let a1 = admission.admit(ip("10.0.0.1")).expect("a1");
        let a2 = admission.admit(ip("10.0.0.1")).expect("a2");
        assert_eq!(admission.admit(ip("10.0.0.1")).unwrap_err(), Refusal::PerIp);
        // The refused attempt gave its total reservation back.
        assert_eq!(admission.open(), 2);
        let b = admission.admit(ip("10.0.0.2")).expect("another address");
        assert_eq!(admission.tracked_ips(), 2);
        drop(a1);
        assert!(admission.admit(ip("10.0.0.1")).is_ok(), "a freed place is usable again");
        drop((a2, b));
        assert_eq!(admission.tracked_ips(), 0, "entries go when their count reaches 0");
        assert_eq!(admission.open(), 0);
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_ipv4() {
        let admission = Admission::new(None, 1, Vec::new());
        let _a = admission.admit(ip("10.0.0.1")).expect("v4");
        assert_eq!(admission.admit(ip("::ffff:10.0.0.1")).unwrap_err(), Refusal::PerIp);
    }

    #[test]
    fn counts_stay_exact_under_concurrency() {
        let admission = Admission::new(Some(8), 3, Vec::new());
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let admission = admission.clone();
                let peak = peak.clone();
                std::thread::spawn(move || {
                    let address = ip(&format!("10.0.0.{}", t % 3));
                    for _ in 0..2000 {
                        if let Ok(slot) = admission.admit(address) {
                            peak.fetch_max(admission.open(), Ordering::Relaxed);
                            drop(slot);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        assert!(peak.load(Ordering::Relaxed) <= 8);
        assert_eq!(admission.open(), 0);
        assert_eq!(admission.tracked_ips(), 0);
    }

    #[test]
    fn origins_exact_and_wildcard() {
        let patterns = [
            "https://app.example.com",
            "https://*.example.org",
            "http://localhost:8000",
        ]
        .iter()
        .map(|p| OriginPattern::parse(p).expect("valid pattern"))
        .collect();
        let admission = Admission::new(None, 0, patterns);
        let allowed = |origin: Option<&str>| admission.origin_allowed(&headers(origin));
        assert!(allowed(None), "no Origin: not a browser, allowed");
        assert!(allowed(Some("https://app.example.com")));
        assert!(allowed(Some("HTTPS://App.Example.com")));
        assert!(allowed(Some("https://a.example.org")));
        assert!(allowed(Some("https://a.b.example.org")));
        assert!(allowed(Some("http://localhost:8000")));
        assert!(!allowed(Some("http://app.example.com")), "scheme matters");
        assert!(!allowed(Some("https://example.org")), "the wildcard needs a subdomain");
        assert!(!allowed(Some("https://evilexample.org")));
        assert!(!allowed(Some("https://a.example.org.evil.com")));
        assert!(!allowed(Some("https://evil.com:443.example.org")));
        assert!(!allowed(Some("https://a.example.org:8443")), "port matters");
        assert!(!allowed(Some("http://localhost:8001")));
        assert!(!allowed(Some("null")));
    }

    #[test]
    fn no_patterns_allow_any_origin() {
        let admission = Admission::new(None, 0, Vec::new());
        assert!(admission.origin_allowed(&headers(Some("https://anything.test"))));
    }

    #[test]
    fn bad_origin_patterns_are_refused() {
        for bad in [
            "example.com",
            "https://",
            "https://example.com/",
            "https://example.com/path",
            "https://*",
            "https://*.",
            "https://a.*.example.com",
            "https://*example.com",
            "://example.com",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(
            OriginPattern::parse("HTTPS://*.Example.com"),
            Ok(OriginPattern::Subdomains {
                prefix: "https://".into(),
                suffix: ".example.com".into()
            })
        );
    }

    #[test]
    fn default_ceiling_follows_the_open_files_limit() {
        let Some(limit) = open_files_limit() else {
            return;
        };
        let derived = default_max_connections().expect("a finite limit gives a ceiling") as u64;
        assert!(derived < limit && derived >= limit / 2);
    }
}
