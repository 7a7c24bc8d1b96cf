//! Python workers (`python -m switchyard runworker`) beside the Rust ones.
//!
//! Why this exists: the Python package (`python/`) speaks the same protocol as
//! `switchyard-worker`, and its guarantees — exactly once, in order, across kill -9 and
//! SIGTERM, in pools mixing both kinds — are proven the same way: real Redis, the real
//! interface, real WebSocket clients, worker processes started and killed like the Rust
//! ones (they are [`Proc`]s in [`Stack::workers`]). The interpreter is `SWITCHYARD_PYTHON`
//! or the repository's `.venv/bin/python`, with the package installed (`scripts/test`
//! does `pip install ./python`); the apps are `tests/python/e2e_apps.py`, which serves the
//! Django example (`examples/django/`) and two test consumers.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::process::Proc;
use crate::stack::{Stack, StackBuilder, PREFIX};

/// What the Python workers serve: `tests/python/e2e_apps.py`'s `APPS`.
pub const APPS: &str = "e2e_apps:APPS";

/// The interface routes for the Python apps: `chat`, `echo`, `broken` and Django on `/django/`.
pub const ROUTES: &[&str] = &[
    "--route",
    "/ws/chat/=chat",
    "--route",
    "/ws/echo/=echo",
    "--route",
    "/ws/broken/=broken",
    "--http-route",
    "/django/=http.django",
];

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The Python interpreter with the `switchyard` package; panics with what to do when the
/// package is missing.
pub fn python() -> PathBuf {
    static CHECKED: OnceLock<PathBuf> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let python = std::env::var_os("SWITCHYARD_PYTHON")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
            let ok = Command::new(&python)
                .args(["-c", "import switchyard, django"])
                .current_dir(std::env::temp_dir())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "{} cannot import switchyard and django: create the environment first \
                 (python3 -m venv .venv && .venv/bin/pip install './python[test]'; scripts/test does \
                 this), or point SWITCHYARD_PYTHON at an interpreter that has them",
                python.display()
            );
            python
        })
        .clone()
}

/// `PYTHONPATH` for the workers and scripts: the test apps and the Django example.
pub fn python_path() -> String {
    let root = repo_root();
    format!(
        "{}:{}",
        root.join("tests/python").display(),
        root.join("examples/django").display()
    )
}

/// A stack routed for the Python apps, with no worker yet (start them with
/// [`Stack::spawn_python_worker`] and [`Stack::spawn_worker_with`]).
pub fn python_stack(name: &str) -> StackBuilder {
    let mut builder = Stack::builder(name).workers(0);
    for arg in ROUTES {
        builder = builder.interface_arg(arg);
    }
    builder
}

impl Stack {
    /// Starts one Python worker (`python -m switchyard runworker … e2e_apps:APPS`) pointed at
    /// the test's Redis; returns its index in `workers`.
    pub fn spawn_python_worker(&mut self, extra_args: &[&str]) -> usize {
        let mut args = vec!["-m".to_string(), "switchyard".to_string(), "runworker".to_string()];
        args.extend(self.redis.client_args());
        args.extend(["--prefix".to_string(), PREFIX.to_string()]);
        args.extend(extra_args.iter().map(|s| s.to_string()));
        args.push(APPS.to_string());
        let env = [
            ("PYTHONPATH".to_string(), python_path()),
            ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
        ];
        let index = self.workers.len();
        let proc = Proc::spawn(
            &format!("python-worker-{index}"),
            &python(),
            &args,
            &env,
            self.dir.path(),
        )
        .expect("spawn python -m switchyard runworker");
        self.workers.push(proc);
        index
    }

    /// Runs a Python snippet with the test apps on the path and `REDIS_URL` set to the
    /// test's Redis; returns its stdout, panicking with its output if it fails.
    pub fn run_python(&self, code: &str) -> String {
        let output = Command::new(python())
            .args(["-c", code])
            .env("PYTHONPATH", python_path())
            .env("REDIS_URL", self.redis.url())
            .env("SWITCHYARD_PREFIX", PREFIX)
            .output()
            .expect("run python");
        assert!(
            output.status.success(),
            "python snippet failed ({}):\n{code}\n--- stdout\n{}\n--- stderr\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}
