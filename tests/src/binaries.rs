//! Where the binaries under test are: the workspace's own build, next to the test executable.
//!
//! Why a module of its own: every part of the harness that starts a process needs it, and the
//! message when a binary is missing should be the same everywhere.

use std::path::PathBuf;

/// Name of the interface binary.
pub const INTERFACE_BIN: &str = "switchyard-interface";
/// Name of the worker binary.
pub const WORKER_BIN: &str = "switchyard-worker";
/// Name of the operations binary.
pub const OPS_BIN: &str = "switchyard";

/// Directory holding the workspace binaries: `SWITCHYARD_BIN_DIR` if set, else the profile
/// directory the running test executable lives in (`target/<profile>/deps/..`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SWITCHYARD_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test executable has a parent directory");
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps has a parent").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// Path of one of our binaries; panics with a clear message if it has not been built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "binary `{name}` not found at {} — build the binaries first with `cargo build --bins` \
             (scripts/test does this), or point SWITCHYARD_BIN_DIR at them",
            path.display()
        );
    }
    path
}
