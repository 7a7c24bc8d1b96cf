//! `promtool` (Debian's `prometheus` package) on the shipped rules, from the repository root.
//!
//! Why this exists: the alert rules are part of what ships, so the tests check them with the
//! real tool — `promtool check rules` and `promtool test rules` — in more than one test file.

use std::process::Command;

use crate::supervisor::repo_root;

/// Runs `promtool args…` in the repository root; its output. Panics, with the output, when
/// it fails or is not installed (`scripts/test` installs it).
pub fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install Debian's prometheus package (scripts/test does)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}
