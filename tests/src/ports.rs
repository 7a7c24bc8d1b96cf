//! Free TCP ports on 127.0.0.1 for the servers a test starts.
//!
//! Why this exists: tests run in parallel (threads under `cargo test`, processes under
//! nextest) and each one needs its own redis-server and interface — never the machine's
//! 6379. Ports are drawn at random *below* the kernel's ephemeral range (32768+), so the
//! many outgoing client sockets of a test cannot take a port between the moment it is picked
//! and the moment the server binds it; a process-wide set stops one test binary from handing
//! out a port twice. A collision with another process remains possible but rare, so the
//! servers that start on these ports retry with a new one when the bind fails.
//!
//! A Redis Cluster node needs two ports: its client port P and its cluster bus port P+10000
//! (fixed by Redis). [`free_cluster_port`] draws P from 10000..20000, so both stay below the
//! ephemeral range and P itself never collides with [`free_port`]'s range; the bus port is
//! recorded in the same set, so this process never hands it out again either.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::net::TcpListener;
use std::sync::Mutex;

const LOW: u16 = 20_000;
const HIGH: u16 = 32_000;

/// Client ports of Redis Cluster nodes: 10000..20000 (bus ports 20000..30000).
const CLUSTER_LOW: u16 = 10_000;
const CLUSTER_HIGH: u16 = 20_000;
/// Redis puts a cluster node's bus on its client port + 10000.
pub const CLUSTER_BUS_OFFSET: u16 = 10_000;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port in 20000..32000 that was free a moment ago and that this process has not handed
/// out before.
pub fn free_port() -> u16 {
    let state = RandomState::new();
    for attempt in 0u64..10_000 {
        let r = state.hash_one((attempt, std::process::id()));
        let port = LOW + (r % u64::from(HIGH - LOW)) as u16;
        if port == 6379 {
            continue;
        }
        {
            let mut guard = HANDED_OUT.lock().unwrap();
            let set = guard.get_or_insert_with(HashSet::new);
            if set.contains(&port) {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", port)).is_err() {
                continue;
            }
            set.insert(port);
        }
        return port;
    }
    panic!("no free port found in {LOW}..{HIGH}");
}

/// A port P in 10000..20000 such that P and its cluster bus port P+10000 were both free a
/// moment ago and neither has been handed out by this process before (both are recorded).
pub fn free_cluster_port() -> u16 {
    let state = RandomState::new();
    for attempt in 0u64..10_000 {
        let r = state.hash_one((attempt, std::process::id(), "cluster"));
        let port = CLUSTER_LOW + (r % u64::from(CLUSTER_HIGH - CLUSTER_LOW)) as u16;
        let bus = port + CLUSTER_BUS_OFFSET;
        let mut guard = HANDED_OUT.lock().unwrap();
        let set = guard.get_or_insert_with(HashSet::new);
        if set.contains(&port) || set.contains(&bus) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_err() || TcpListener::bind(("127.0.0.1", bus)).is_err() {
            continue;
        }
        set.insert(port);
        set.insert(bus);
        return port;
    }
    panic!("no free port pair (P, P+{CLUSTER_BUS_OFFSET}) found with P in {CLUSTER_LOW}..{CLUSTER_HIGH}");
}
