//! Free TCP ports on 127.0.0.1 for the servers a test starts.
//!
//! Why this exists: tests run in parallel (threads under `cargo test`, processes under
//! nextest) and each one needs its own redis-server and interface — never the machine's
//! 6379. Ports are drawn at random *below* the kernel's ephemeral range (32768+), so the
//! many outgoing client sockets of a test cannot take a port between the moment it is picked
//! and the moment the server binds it; a process-wide set stops one test binary from handing
//! out a port twice. A collision with another process remains possible but rare, so the
//! servers that start on these ports retry with a new one when the bind fails.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::net::TcpListener;
use std::sync::Mutex;

const LOW: u16 = 20_000;
const HIGH: u16 = 32_000;

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
