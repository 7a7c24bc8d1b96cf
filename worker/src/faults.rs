//! Test-only fault triggers, read from environment variables.
//!
//! The reliability tests need consumers that panic, fail, or take the whole
//! process down on one chosen message, run by the real worker binary. Rather
//! than a separate test binary, the built-in echo app, the HTTP example and
//! the commit path look here; with none of these variables set (production)
//! every check is one `OnceLock` read that says "no".
//!
//! | variable | effect |
//! |---|---|
//! | `SWITCHYARD_TEST_PANIC_ON=TEXT` | echo (WebSocket) and `POST /api/example/echo` panic on a message / body equal to TEXT |
//! | `SWITCHYARD_TEST_FAIL_ON=TEXT` | the same, returning an error instead |
//! | `SWITCHYARD_TEST_ABORT_ON=TEXT` | the same, aborting the process (as an out-of-memory kill would) |
//! | `SWITCHYARD_TEST_ABORT_BEFORE_COMMIT=METHOD PREFIX` | an HTTP request with that method whose path starts with PREFIX (`PUT /api/…`) aborts the process after the app answered, before the commit |
//! | `SWITCHYARD_TEST_WATCH_PAUSE_MS=N` | the process's first WATCH/MULTI commit (`--commit-watch-min`) waits N ms between its reads and its `EXEC`: a slow worker, for its claimer to overtake |
//!
//! Never set them in a deployment: they exist so that tests can prove the
//! worker survives (or recovers from) exactly these faults.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// What a consumer should do with a message, as the test variables say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Panic,
    Fail,
    Abort,
}

struct Triggers {
    panic_on: Option<String>,
    fail_on: Option<String>,
    abort_on: Option<String>,
    abort_before_commit: Option<String>,
    watch_pause: Option<Duration>,
}

fn triggers() -> &'static Triggers {
    static TRIGGERS: OnceLock<Triggers> = OnceLock::new();
    TRIGGERS.get_or_init(|| {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        Triggers {
            panic_on: var("SWITCHYARD_TEST_PANIC_ON"),
            fail_on: var("SWITCHYARD_TEST_FAIL_ON"),
            abort_on: var("SWITCHYARD_TEST_ABORT_ON"),
            abort_before_commit: var("SWITCHYARD_TEST_ABORT_BEFORE_COMMIT"),
            watch_pause: var("SWITCHYARD_TEST_WATCH_PAUSE_MS")
                .and_then(|ms| ms.parse().ok())
                .map(Duration::from_millis),
        }
    })
}

/// The fault configured for a message (text or body) of a test consumer.
pub fn for_message(message: &[u8]) -> Fault {
    let t = triggers();
    let is = |trigger: &Option<String>| trigger.as_deref().is_some_and(|text| text.as_bytes() == message);
    if is(&t.abort_on) {
        Fault::Abort
    } else if is(&t.panic_on) {
        Fault::Panic
    } else if is(&t.fail_on) {
        Fault::Fail
    } else {
        Fault::None
    }
}

/// Acts on a message's fault: aborts, panics, or returns `Err` for `Fail`.
pub fn trip(message: &[u8]) -> Result<(), &'static str> {
    match for_message(message) {
        Fault::None => Ok(()),
        Fault::Fail => Err("test fault: SWITCHYARD_TEST_FAIL_ON matched"),
        Fault::Panic => panic!("test fault: SWITCHYARD_TEST_PANIC_ON matched"),
        Fault::Abort => {
            tracing::error!("test fault: SWITCHYARD_TEST_ABORT_ON matched; aborting the process");
            std::process::abort()
        }
    }
}

/// Aborts the process if an HTTP request (`method`, `path`) is configured to
/// die between its app's answer and its commit.
pub fn before_http_commit(method: &str, path: &str) {
    let matches = |trigger: &str| {
        trigger
            .split_once(' ')
            .is_some_and(|(m, prefix)| m.eq_ignore_ascii_case(method) && path.starts_with(prefix))
    };
    if triggers().abort_before_commit.as_deref().is_some_and(matches) {
        tracing::error!(
            method,
            path,
            "test fault: SWITCHYARD_TEST_ABORT_BEFORE_COMMIT matched; aborting the process"
        );
        std::process::abort()
    }
}

/// Waits, once per process, where a WATCH/MULTI commit is about to `EXEC`, if the
/// test variable asks for it.
pub async fn before_watched_exec() {
    static PAUSED: AtomicBool = AtomicBool::new(false);
    if let Some(pause) = triggers().watch_pause {
        if !PAUSED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                ?pause,
                "test fault: SWITCHYARD_TEST_WATCH_PAUSE_MS: pausing before EXEC"
            );
            tokio::time::sleep(pause).await;
        }
    }
}
