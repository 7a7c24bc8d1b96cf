//! Which local (source) address each client connection binds before it connects.
//!
//! One source IP gives about 28,000 ephemeral ports towards one server port, and closed
//! connections linger in TIME_WAIT. Spreading connections over 127.0.0.2, 127.0.0.3 … (all of
//! 127.0.0.0/8 is on `lo` under Linux) lifts both limits; `--source-ip-offset` keeps several
//! load processes on disjoint addresses.

use std::net::{IpAddr, Ipv4Addr};

/// Connections per source IP before moving to the next one (below the ephemeral range).
pub const PER_SOURCE_IP: u64 = 25_000;

/// Hands out source IPs for connection numbers.
#[derive(Debug, Clone, Copy)]
pub struct SourceAddrs {
    /// First address index (127.0.0.0 + first); 0 disables binding.
    first: u32,
    /// How many consecutive addresses to use.
    count: u32,
    /// Rotate per connection (true) or fill one address before the next (false).
    rotate: bool,
}

impl SourceAddrs {
    /// No explicit source binding: the kernel picks 127.0.0.1 and a port.
    pub fn unbound() -> Self {
        SourceAddrs {
            first: 0,
            count: 0,
            rotate: false,
        }
    }

    /// `count` addresses starting at 127.0.0.(2 + offset·count), each connection moving to the
    /// next address (`rotate`, for churn) or filling an address before taking the next.
    pub fn loopback(offset: u32, count: u32, rotate: bool) -> Self {
        let count = count.max(1);
        SourceAddrs {
            first: 2 + offset.saturating_mul(count),
            count,
            rotate,
        }
    }

    /// Enough addresses for `connections` held at once (filling each up to [`PER_SOURCE_IP`]).
    pub fn for_connections(offset: u32, connections: u64) -> Self {
        let count = connections.div_ceil(PER_SOURCE_IP).max(1);
        Self::loopback(offset, u32::try_from(count).unwrap_or(u32::MAX), false)
    }

    /// The source IP for connection number `n`, or `None` to let the kernel choose.
    pub fn ip_for(&self, n: u64) -> Option<IpAddr> {
        if self.count == 0 {
            return None;
        }
        let slot = if self.rotate {
            n % u64::from(self.count)
        } else {
            (n / PER_SOURCE_IP) % u64::from(self.count)
        };
        let index = u64::from(self.first) + slot;
        // Stay inside 127.0.0.0/8 and below the broadcast address.
        let index = u32::try_from(index.min(0x00ff_fffe)).unwrap_or(0x00ff_fffe);
        Some(IpAddr::V4(Ipv4Addr::from(0x7f00_0000u32 | index)))
    }

    /// Human description, e.g. `127.0.0.2–127.0.0.5`.
    pub fn describe(&self) -> String {
        match (self.ip_for(0), self.count) {
            (None, _) => "kernel default".to_string(),
            (Some(a), 1) => a.to_string(),
            (Some(a), c) => {
                let last = Ipv4Addr::from(0x7f00_0000u32 | (self.first + c - 1).min(0x00ff_fffe));
                format!("{a}–{last} ({c} addresses)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_then_moves_on() {
        let s = SourceAddrs::for_connections(0, 60_000);
        assert_eq!(s.ip_for(0), Some("127.0.0.2".parse().expect("ip")));
        assert_eq!(s.ip_for(24_999), Some("127.0.0.2".parse().expect("ip")));
        assert_eq!(s.ip_for(25_000), Some("127.0.0.3".parse().expect("ip")));
        assert_eq!(s.ip_for(59_999), Some("127.0.0.4".parse().expect("ip")));
    }

    #[test]
    fn offsets_are_disjoint_and_rotation_cycles() {
        let a = SourceAddrs::loopback(0, 4, true);
        let b = SourceAddrs::loopback(1, 4, true);
        assert_eq!(a.ip_for(3), Some("127.0.0.5".parse().expect("ip")));
        assert_eq!(a.ip_for(4), Some("127.0.0.2".parse().expect("ip")));
        assert_eq!(b.ip_for(0), Some("127.0.0.6".parse().expect("ip")));
        assert_eq!(SourceAddrs::unbound().ip_for(7), None);
    }
}
