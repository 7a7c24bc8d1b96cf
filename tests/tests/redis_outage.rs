//! Redis outages: `/readyz` reports them, and sockets stay open while Redis is away; both
//! sides reconnect on their own and carry on once it is back. Under load, for 10 s, frozen
//! (SIGSTOP) or stopped: with the default flags (`--redis-hold` 30 s, sized for a failover)
//! nothing is lost or closed; with a hold below the outage, senders get 1013 and every
//! message is accounted for.
//!
//! Outages of *the* server: these tests always run on a single redis-server
//! (`.single_redis()`), whatever `SWITCHYARD_TEST_REDIS` says.

use std::time::{Duration, Instant};

use switchyard_tests::load::Load;
use switchyard_tests::stack::REPLY_TIMEOUT;
use switchyard_tests::{bounded, eventually, http, Incoming, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_survive_a_redis_restart() {
    bounded(Duration::from_secs(60), async {
        let mut stack = Stack::builder("redis-outage").single_redis().workers(1).start().await;
        let mut c = stack.ws("/ws/echo/").await;
        c.send_text("before").await.unwrap();
        assert_eq!(c.recv(REPLY_TIMEOUT).await.unwrap(), Incoming::Text("before".into()));

        stack.redis.single_mut().kill();
        let addr = stack.addr.clone();
        let not_ready = readyz_becomes(&addr, 503, Duration::from_secs(15)).await;
        assert!(not_ready, "/readyz did not turn 503 within 15 s of Redis dying");
        assert_eq!(
            http::status(&stack.addr, "/healthz").await,
            Some(200),
            "/healthz while Redis is down"
        );

        tokio::time::sleep(Duration::from_secs(1)).await;
        stack.redis.single_mut().restart().await.unwrap();
        let ready = readyz_becomes(&addr, 200, Duration::from_secs(20)).await;
        assert!(ready, "/readyz did not return to 200 within 20 s of Redis coming back");

        // The same socket works again (the restarted Redis is empty: groups and streams must
        // be recreated by the processes themselves).
        c.send_text("after").await.unwrap();
        assert_eq!(
            c.recv(Duration::from_secs(30)).await.unwrap(),
            Incoming::Text("after".into()),
            "echo on the socket opened before the outage"
        );
        assert!(stack.workers[0].is_running(), "worker died during the outage");
        // And new connections too.
        let mut d = stack.ws("/ws/echo/").await;
        d.send_text("new").await.unwrap();
        assert_eq!(d.recv(REPLY_TIMEOUT).await.unwrap(), Incoming::Text("new".into()));
    })
    .await
}

/// Load connections, and messages each keeps unanswered.
const CONNS: usize = 150;
const WINDOW: u64 = 2;
/// How long Redis is away.
const OUTAGE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
enum Outage {
    /// SIGSTOP: sockets stay open, nothing is answered.
    Frozen,
    /// SIGTERM, then a restart on the same port with the same data.
    Stopped,
}

/// Takes Redis away for [`OUTAGE`], noting when `/readyz` turned 503; returns the instant
/// it came back.
async fn redis_down(stack: &mut Stack, outage: Outage) -> (Option<Duration>, Instant) {
    let addr = stack.addr.clone();
    let start = Instant::now();
    match outage {
        Outage::Frozen => stack.redis.single_mut().pause(),
        Outage::Stopped => stack.redis.single_mut().stop().await,
    }
    let not_ready = readyz_becomes(&addr, 503, OUTAGE - Duration::from_secs(1))
        .await
        .then(|| start.elapsed());
    tokio::time::sleep(OUTAGE.saturating_sub(start.elapsed())).await;
    match outage {
        Outage::Frozen => stack.redis.single_mut().resume(),
        Outage::Stopped => stack.redis.single_mut().restart().await.expect("restart redis-server"),
    }
    (not_ready, Instant::now())
}

async fn assert_ready(stack: &Stack) {
    let ready = readyz_becomes(&stack.addr, 200, Duration::from_secs(15)).await;
    assert!(ready, "/readyz not 200 under load before the outage");
}

/// Polls the interface's `/readyz` until it answers `status`; false if `timeout` passes first.
async fn readyz_becomes(addr: &str, status: u16, timeout: Duration) -> bool {
    eventually(timeout, || async move {
        (http::status(addr, "/readyz").await == Some(status)).then_some(())
    })
    .await
    .is_some()
}

/// No process panicked or restarted: same worker PIDs, all running, no panic in any log.
fn assert_no_crash(stack: &mut Stack, pids: &[u32]) {
    assert!(stack.interface().is_running(), "the interface died");
    assert!(!stack.interface().log().contains("panicked"), "the interface panicked");
    let now: Vec<u32> = stack.workers.iter().map(|w| w.pid()).collect();
    assert_eq!(now, pids, "worker PIDs changed");
    for w in &mut stack.workers {
        assert!(w.is_running(), "{} died", w.name());
        assert!(!w.log().contains("panicked"), "{} panicked", w.name());
    }
}

/// With the default flags (`--redis-hold` above the outage), every socket under load stays
/// open and every message is answered exactly once, in order, once Redis is back.
async fn load_rides_out(outage: Outage) {
    let name = format!("redis-outage-load-{outage:?}").to_lowercase();
    let mut builder = Stack::builder(&name).single_redis().workers(2);
    if matches!(outage, Outage::Stopped) {
        builder = builder.persistent_redis();
    }
    let mut stack = builder.start().await;
    let pids: Vec<u32> = stack.workers.iter().map(|w| w.pid()).collect();
    let load = Load::start_echo(&stack.ws_url("/ws/echo/"), CONNS, WINDOW, Duration::from_secs(45))
        .await
        .unwrap();
    assert!(
        load.wait_answered(3 * CONNS as u64, Duration::from_secs(20)).await,
        "load did not get going"
    );
    assert_ready(&stack).await;
    let before = load.answered();
    let (not_ready, back) = redis_down(&mut stack, outage).await;
    let during = load.answered() - before;
    let at_return = load.answered();
    assert!(
        load.wait_answered(at_return + 3 * CONNS as u64, Duration::from_secs(30))
            .await,
        "the load did not resume within 30 s of Redis coming back"
    );
    let resumed = back.elapsed();
    let report = load.finish().await;
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{} connections failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    for (i, conn) in report.conns.iter().flatten().enumerate() {
        assert_eq!(conn.closed, None, "connection {i} was closed");
        assert_eq!(
            conn.answered, conn.sent,
            "connection {i}: sent {} answered {}",
            conn.sent, conn.answered
        );
    }
    assert_no_crash(&mut stack, &pids);
    if matches!(outage, Outage::Stopped) {
        assert!(not_ready.is_some(), "/readyz did not turn 503 while Redis was stopped");
    }
    eprintln!(
        "[{name}] {CONNS} connections, {} answered in all, {during} during the {OUTAGE:?} outage; \
         /readyz 503 after {not_ready:?}; 3×{CONNS} more answered {resumed:?} after Redis came back",
        report.total()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_rides_out_a_frozen_redis() {
    bounded(Duration::from_secs(120), load_rides_out(Outage::Frozen)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_rides_out_a_stopped_redis() {
    bounded(Duration::from_secs(120), load_rides_out(Outage::Stopped)).await
}

/// With `--redis-hold 2` (below the outage): a connection whose message could not be
/// appended in time is closed with 1013, and nothing it sent is silently lost — every
/// message was either answered or its connection got 1013. Idle connections stay open;
/// connections that first send during the outage all get 1013 after the hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_hold_closes_senders_with_1013() {
    bounded(Duration::from_secs(120), async {
        let mut stack = Stack::builder("redis-outage-hold")
            .single_redis()
            .workers(1)
            .interface_arg("--redis-hold")
            .interface_arg("2")
            .start()
            .await;
        let pids: Vec<u32> = stack.workers.iter().map(|w| w.pid()).collect();
        // Idle through the outage, and sending first during it: 20 each.
        let (mut idle, mut late) = (Vec::new(), Vec::new());
        for i in 0..40 {
            let mut c = stack.ws("/ws/echo/").await;
            c.send_text(format!("idle {i}")).await.unwrap();
            assert_eq!(
                c.recv(REPLY_TIMEOUT).await.unwrap(),
                Incoming::Text(format!("idle {i}"))
            );
            if i % 2 == 0 {
                idle.push(c);
            } else {
                late.push(c);
            }
        }
        let load = Load::start_echo(&stack.ws_url("/ws/echo/"), CONNS, WINDOW, Duration::from_secs(45))
            .await
            .unwrap();
        assert!(
            load.wait_answered(3 * CONNS as u64, Duration::from_secs(20)).await,
            "load did not get going"
        );
        assert_ready(&stack).await;
        let down = Instant::now();
        stack.redis.single_mut().pause();
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A message sent into a frozen Redis: held --redis-hold, then 1013.
        let late_closes = futures::future::join_all(late.iter_mut().enumerate().map(|(i, c)| async move {
            let sent = Instant::now();
            c.send_text(format!("late {i}")).await.unwrap();
            match c.recv(OUTAGE - Duration::from_secs(2)).await {
                Ok(Incoming::Close(Some(1013), _)) => sent.elapsed(),
                other => panic!("late sender {i}: expected close 1013 during the outage, got {other:?}"),
            }
        }))
        .await;
        tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
        stack.redis.single_mut().resume();
        let back = Instant::now();
        let at_return = load.answered();
        // Let the connections that were not closed carry on a little (all may have been
        // closed); `finish` then waits for every answer they are owed.
        load.wait_answered(at_return + CONNS as u64 / 2, Duration::from_secs(10))
            .await;
        let report = load.finish().await;
        let failures = report.failures();
        assert!(
            failures.is_empty(),
            "{} connections failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        let (mut closed, mut unanswered, mut first_close, mut last_close) = (0, 0, None, None);
        for (i, conn) in report.conns.iter().flatten().enumerate() {
            match conn.closed {
                None => assert_eq!(conn.answered, conn.sent, "open connection {i} lost messages"),
                Some((code, at)) => {
                    assert_eq!(code, 1013, "connection {i} closed with {code}");
                    // Unanswered: the message whose append was refused and those queued behind it.
                    assert!(
                        conn.answered < conn.sent && conn.sent - conn.answered <= WINDOW,
                        "connection {i} got 1013 with {} of {} sent answered",
                        conn.answered,
                        conn.sent
                    );
                    assert!(at >= down, "connection {i} closed before the outage");
                    closed += 1;
                    unanswered += conn.sent - conn.answered;
                    let after = at - down;
                    first_close = Some(first_close.map_or(after, |f: Duration| f.min(after)));
                    last_close = Some(last_close.map_or(after, |l: Duration| l.max(after)));
                }
            }
        }
        for (i, c) in idle.iter_mut().enumerate() {
            c.send_text(format!("after {i}")).await.unwrap();
            assert_eq!(
                c.recv(REPLY_TIMEOUT).await.unwrap(),
                Incoming::Text(format!("after {i}")),
                "idle connection {i} after the outage"
            );
        }
        assert_no_crash(&mut stack, &pids);
        eprintln!(
            "[redis-outage-hold] {closed} of {CONNS} loaded connections closed with 1013 \
             ({first_close:?}..{last_close:?} after Redis froze; {unanswered} messages unanswered on them); \
             the rest and 20 idle connections carried on {:?} after Redis came back; \
             20 late senders got 1013 {:?}..{:?} after sending",
            back.elapsed(),
            late_closes.iter().min(),
            late_closes.iter().max()
        );
    })
    .await
}
