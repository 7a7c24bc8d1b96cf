//! How many sockets one load-tool process may open.
//!
//! The machine caps every process at 20,000 open files and the cap cannot be raised, so a
//! scenario asking for more connections than fit must stop before it starts (with a hint to
//! run several processes on different source IPs) instead of failing halfway with EMFILE.

use anyhow::{bail, Result};

/// File descriptors kept back for the runtime, stdio, /proc reads and hyper's internals.
pub const RESERVED_FDS: u64 = 64;

/// The soft `Max open files` limit of this process, from /proc/self/limits.
pub fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files(&text)
}

fn parse_open_files(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.trim_start_matches("Max open files").split_whitespace().next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

/// Refuses `connections` simultaneous sockets if this process cannot hold them.
pub fn check_connections(connections: u64) -> Result<()> {
    let Some(limit) = open_files_limit() else {
        return Ok(());
    };
    let usable = limit.saturating_sub(RESERVED_FDS);
    if connections > usable {
        let per_process = usable.max(1);
        let processes = connections.div_ceil(per_process);
        bail!(
            "{connections} connections do not fit in one process: the open-files limit is {limit} \
             ({usable} usable). Run {processes} processes with about {} connections each, giving \
             each its own --source-ip-offset (e.g. 0, 1, 2 …) so their source addresses differ.",
            connections.div_ceil(processes)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_limits_line() {
        let text = "Limit                     Soft Limit           Hard Limit           Units\n\
                    Max open files            20000                20000                files\n";
        assert_eq!(parse_open_files(text), Some(20000));
        let unl = "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_files(unl), Some(u64::MAX));
    }
}
