//! A temporary directory per test for redis data and process logs.
//!
//! Why this exists: logs are the only way to see why a multi-process test failed. The
//! directory is deleted when the test passes and kept (with its path printed) when the test
//! panics, so the full logs of every process can be read afterwards. Set
//! `SWITCHYARD_TESTS_KEEP_LOGS=1` to keep it for passing tests too.

use std::path::{Path, PathBuf};

/// Temporary directory that survives a failing test.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// Creates `/tmp/switchyard-<name>-XXXX`.
    pub fn new(name: &str) -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("switchyard-{name}-"))
            .tempdir()
            .expect("create temp dir");
        let path = dir.path().to_path_buf();
        TestDir { dir: Some(dir), path }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed || std::env::var_os("SWITCHYARD_TESTS_KEEP_LOGS").is_some() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                let why = if failed { "test failed: " } else { "" };
                eprintln!("[harness] {why}logs kept in {}", kept.display());
            }
        }
    }
}
