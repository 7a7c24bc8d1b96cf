//! Chaos: echo load over two interfaces while workers are killed with `kill -9`, Redis is
//! stopped and restarted, an interface is restarted and a consumer panics (the workers'
//! test-only `SWITCHYARD_TEST_PANIC_ON`: echo panics on one text, sent by a client of its
//! own, which must get close 1011 while nobody else notices) and the echo channel is stopped
//! (every worker SIGTERMed, none for a few seconds, then new ones: the sockets stay open and
//! what waited is answered once); then every invariant is
//! checked and a report printed. On a Redis Cluster (`SWITCHYARD_TEST_REDIS=cluster`) the Redis fault is
//! a failover instead: the master serving the echo stream is stopped, its replica takes
//! over, and the old master comes back as a replica. `scripts/chaos` runs it longer (`CHAOS_SECONDS`, default here 15 so the
//! whole test stays under ~45 s in CI). See docs/chaos.md.
//!
//! Settings (environment): `CHAOS_SECONDS` (how long faults keep coming; at least one round
//! of all five is always run), `CHAOS_CLIENTS` (default 200), `CHAOS_WINDOW` (messages in
//! flight per client, default 4).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use switchyard_tests::chaos::{rss_kib, stream_figures, ChaosLoad, ClientReport, StreamFigures};
use switchyard_tests::cluster::Cluster;
use switchyard_tests::stack::PREFIX;
use switchyard_tests::{bounded, eventually, Incoming};

const DEFAULT_SECONDS: u64 = 15;
const DEFAULT_CLIENTS: usize = 200;
const DEFAULT_WINDOW: usize = 4;
/// The interface that is restarted; interface 0 runs throughout.
const RESTARTED: usize = 1;
/// How long every client may take to get an answer again after a fault. A killed worker's
/// messages are claimed after ~4 s; an interface restart means a drain, a new process and
/// 100 reconnects on a shared 2-core machine.
const RECOVERY: Duration = Duration::from_secs(40);
/// How long clients wait for their last answers once the load stops.
const QUIET: Duration = Duration::from_secs(30);
/// Memory after the run may exceed the warm-up baseline by this much (KiB): twice a whole
/// idle process, far above allocator noise (see docs/chaos.md for why).
const RSS_SLACK_KIB: u64 = 32 * 1024;
/// Normal load between two faults.
const GAP: Duration = Duration::from_secs(1);
const ECHO_STREAM_GROUP: &str = "workers";
/// The interface's default `--shutdown-timeout`: a drain that long was cut short, closing
/// sockets with a message still in flight.
const DRAIN_DEADLINE: Duration = Duration::from_secs(8);
/// The message the echo consumer panics on (never one of the load's `c<client> <seq>`).
const PANIC_TEXT: &str = "chaos: panic";
/// How long the echo channel stays without a worker in the stopped-channel fault.
const CHANNEL_STOPPED: Duration = Duration::from_secs(3);
/// How long the panicking message's client may wait for its close 1011.
const PANIC_ANSWER: Duration = Duration::from_secs(20);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid number")),
        Err(_) => default,
    }
}

fn rss_bound(baseline: u64) -> u64 {
    baseline + RSS_SLACK_KIB
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// RSS (KiB) of interface 0 and of every running worker, by process name.
fn memory(cluster: &mut Cluster) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let iface = cluster.interface(0);
    if let Ok(kib) = rss_kib(iface.pid()) {
        out.insert(iface.name().to_string(), kib);
    }
    for w in &mut cluster.workers {
        if w.is_running() {
            if let Ok(kib) = rss_kib(w.pid()) {
                out.insert(w.name().to_string(), kib);
            }
        }
    }
    out
}

/// The 1-minute load average (the machine may be shared; it explains slow rounds).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn echo_stream() -> String {
    format!("{PREFIX}:chan:{{echo:0}}")
}

fn echo_figures(cluster: &Cluster) -> anyhow::Result<StreamFigures> {
    let mut con = cluster.redis.conn()?;
    stream_figures(&mut con, &echo_stream(), ECHO_STREAM_GROUP)
}

/// The Redis fault on a Redis Cluster: SIGTERM of the master serving the echo stream (it
/// lets its replica catch up first, so no acknowledged write is lost), wait until the
/// replica has taken over, start the old master again and wait until it has rejoined.
async fn redis_failover(cluster: &mut Cluster) -> anyhow::Result<()> {
    let redis = cluster.redis.cluster_mut();
    let master = redis.master_for_key(&echo_stream())?.port;
    redis.stop_node(master).await?;
    let failover = redis.wait_failover(master, Duration::from_secs(60)).await?;
    eprintln!(
        "[chaos] master {master} stopped; {} took over in {:.1} s",
        failover.new_master,
        failover.took.as_secs_f64()
    );
    redis.restart_node(master).await?;
    Ok(())
}

/// One kind of fault, applied in this order every round.
#[derive(Clone, Copy)]
enum Fault {
    /// `kill -9` of the oldest running worker, and a replacement started at once.
    KillWorker,
    /// Redis SIGTERM, one second down, started again on the same port and data. On a Redis
    /// Cluster: SIGTERM of the master serving the echo stream, a replica takes over, the old
    /// master is started again and rejoins as a replica.
    RestartRedis,
    /// SIGTERM of interface 1 (drain, 1001), a new process on the same port and id.
    RestartInterface,
    /// A client of its own on interface 0 sends the text the echo consumer panics on: the
    /// panic is absorbed, that client is closed with 1011, the worker goes on.
    PanicConsumer,
    /// Every worker SIGTERMed (they drain and exit 0); the channel has no worker for
    /// [`CHANNEL_STOPPED`]; then as many new workers start. Sockets stay open; what was sent
    /// meanwhile waits on the stream and is answered once.
    StopChannel,
}

impl Fault {
    const ROUND: [Fault; 5] = [
        Fault::KillWorker,
        Fault::RestartRedis,
        Fault::RestartInterface,
        Fault::PanicConsumer,
        Fault::StopChannel,
    ];

    fn name(self, redis_cluster: bool) -> &'static str {
        match self {
            Fault::KillWorker => "kill -9 worker",
            Fault::RestartRedis if redis_cluster => "redis failover",
            Fault::RestartRedis => "redis restart",
            Fault::RestartInterface => "interface restart",
            Fault::PanicConsumer => "consumer panic",
            Fault::StopChannel => "channel stopped",
        }
    }
}

#[derive(Default)]
struct Faults {
    worker_kills: u32,
    redis_restarts: u32,
    interface_restarts: u32,
    consumer_panics: u32,
    channel_stops: u32,
    /// How the panicking message's client was answered, by close code (want only 1011).
    panic_answers: BTreeMap<String, u32>,
    /// Per fault kind: how long until every client had an answer again.
    recoveries: BTreeMap<&'static str, Vec<Duration>>,
    /// SIGTERM → exit of the restarted interface.
    drains: Vec<Duration>,
    killed: Vec<usize>,
}

impl Faults {
    fn recovered(&mut self, kind: &'static str, took: Duration) {
        self.recoveries.entry(kind).or_default().push(took);
    }
}

/// One panicking message from a client of its own on interface 0: how it was answered
/// (`"1011"` expected; another close code, a frame, or `"no close within …"`).
async fn panic_once(cluster: &Cluster) -> String {
    let mut client = cluster.ws(0, "/ws/echo/").await;
    if let Err(e) = client.send_text(PANIC_TEXT).await {
        return format!("send failed: {e:#}");
    }
    match client.recv(PANIC_ANSWER).await {
        Ok(Incoming::Close(Some(code), _)) => code.to_string(),
        Ok(other) => format!("{other:?}"),
        Err(_) => format!("no close within {PANIC_ANSWER:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_under_load_keeps_every_invariant() {
    let seconds: u64 = env_or("CHAOS_SECONDS", DEFAULT_SECONDS);
    let clients: usize = env_or("CHAOS_CLIENTS", DEFAULT_CLIENTS);
    let window: usize = env_or("CHAOS_WINDOW", DEFAULT_WINDOW);
    bounded(Duration::from_secs(seconds + 240), async move {
        let mut cluster = Cluster::builder("chaos")
            .interfaces(2)
            .workers(3)
            .persistent_redis()
            .worker_env("SWITCHYARD_TEST_PANIC_ON", PANIC_TEXT)
            .start()
            .await;
        let idle = memory(&mut cluster);

        let load = ChaosLoad::start(&cluster.addrs, "/ws/echo/", clients, window, QUIET);
        let connected = eventually(Duration::from_secs(60), || async {
            (load.connected() == clients).then_some(())
        })
        .await;
        assert!(
            connected.is_some(),
            "only {} of {clients} clients connected within 60 s",
            load.connected()
        );
        let start = load.progress();
        if let Err(stalled) = load.wait_all_progress(&start, Duration::from_secs(30)).await {
            panic!("{} clients got no answer during warm-up: {stalled:?}", stalled.len());
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let baseline = memory(&mut cluster);
        let warm_answers = load.answered();

        let mut faults = Faults::default();
        let mut failures: Vec<String> = Vec::new();
        let chaos_start = Instant::now();
        let load_before = load_average();
        'rounds: loop {
            for fault in Fault::ROUND {
                let kind = fault.name(cluster.redis.is_cluster());
                let before = load.progress();
                let t0 = Instant::now();
                match fault {
                    Fault::KillWorker => {
                        let Some(victim) = (0..cluster.workers.len()).find(|&i| cluster.workers[i].is_running()) else {
                            failures.push("no running worker left to kill".into());
                            break 'rounds;
                        };
                        cluster.workers[victim].kill9();
                        faults.killed.push(victim);
                        cluster.spawn_worker();
                        faults.worker_kills += 1;
                    }
                    Fault::RestartRedis if cluster.redis.is_cluster() => {
                        if let Err(e) = redis_failover(&mut cluster).await {
                            failures.push(format!("redis failover: {e:#}"));
                            break 'rounds;
                        }
                        faults.redis_restarts += 1;
                    }
                    Fault::RestartRedis => {
                        let redis = cluster.redis.single_mut();
                        redis.stop().await;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if let Err(e) = redis.restart().await {
                            failures.push(format!("redis did not come back: {e:#}"));
                            break 'rounds;
                        }
                        faults.redis_restarts += 1;
                    }
                    Fault::RestartInterface => {
                        let iface = cluster.interface(RESTARTED);
                        iface.sigterm();
                        match iface.wait_exit(Duration::from_secs(15)).await {
                            Some(st) if st.success() => faults.drains.push(t0.elapsed()),
                            Some(st) => failures.push(format!("interface-{RESTARTED} exited with {st} after SIGTERM")),
                            None => {
                                failures.push(format!("interface-{RESTARTED} still running 15 s after SIGTERM"));
                                break 'rounds;
                            }
                        }
                        cluster.restart_interface(RESTARTED, &[]).await;
                        faults.interface_restarts += 1;
                    }
                    Fault::PanicConsumer => {
                        let answer = panic_once(&cluster).await;
                        *faults.panic_answers.entry(answer).or_default() += 1;
                        faults.consumer_panics += 1;
                    }
                    Fault::StopChannel => {
                        let running: Vec<usize> =
                            (0..cluster.workers.len()).filter(|&i| cluster.workers[i].is_running()).collect();
                        for &i in &running {
                            cluster.workers[i].sigterm();
                        }
                        for &i in &running {
                            match cluster.workers[i].wait_exit(Duration::from_secs(25)).await {
                                Some(st) if st.success() => faults.killed.push(i),
                                Some(st) => {
                                    faults.killed.push(i);
                                    failures.push(format!("worker-{i} exited with {st} after SIGTERM"));
                                }
                                None => {
                                    failures.push(format!("worker-{i} still running 25 s after SIGTERM"));
                                    break 'rounds;
                                }
                            }
                        }
                        tokio::time::sleep(CHANNEL_STOPPED).await;
                        for _ in &running {
                            cluster.spawn_worker();
                        }
                        faults.channel_stops += 1;
                    }
                }
                eprintln!(
                    "[chaos] {:>5.1} s: {kind} done in {:.1} s; {} answers so far",
                    chaos_start.elapsed().as_secs_f64(),
                    t0.elapsed().as_secs_f64(),
                    load.answered()
                );
                match load.wait_all_progress(&before, RECOVERY).await {
                    Ok(()) => {
                        faults.recovered(kind, t0.elapsed());
                        tokio::time::sleep(GAP).await;
                    }
                    Err(stalled) => {
                        failures.push(format!(
                            "after {kind}: {} clients got no answer within {RECOVERY:?}: {:?}",
                            stalled.len(),
                            &stalled[..stalled.len().min(20)]
                        ));
                        break 'rounds;
                    }
                }
            }
            if chaos_start.elapsed() >= Duration::from_secs(seconds) {
                break;
            }
        }
        let chaos_time = chaos_start.elapsed();
        let load_after = load_average();
        let answered_under_chaos = load.answered() - warm_answers;

        let reports = load.finish().await;

        // The streams drain once the last disconnects are handled.
        let drained = eventually(Duration::from_secs(30), || async {
            echo_figures(&cluster)
                .ok()
                .filter(|f| f.pending == 0 && f.undelivered == 0)
        })
        .await;
        let figures = echo_figures(&cluster);
        let dead_letters: anyhow::Result<u64> = cluster
            .redis
            .conn()
            .and_then(|mut c| Ok(redis::cmd("XLEN").arg(format!("{PREFIX}:deadletter")).query(&mut c)?));
        let status = cluster.status_json().await.ok();

        // Memory settles once the sockets are gone; give it a few seconds.
        let settled = eventually(Duration::from_secs(15), || {
            let now = memory(&mut cluster);
            let within = now.iter().all(|(name, &kib)| match baseline.get(name) {
                Some(&base) => kib <= rss_bound(base),
                None => kib <= rss_bound(baseline.values().copied().max().unwrap_or(0)),
            });
            async move { within.then_some(()) }
        })
        .await;
        let after = memory(&mut cluster);

        // ---- totals --------------------------------------------------------------------
        let sum = |f: fn(&ClientReport) -> u64| reports.iter().map(f).sum::<u64>();
        let sent = sum(|r| r.sent);
        let answered = sum(|r| r.answered);
        let duplicates = sum(|r| r.duplicates);
        let out_of_order = sum(|r| r.out_of_order);
        let foreign = sum(|r| r.foreign);
        let lost_1001 = sum(|r| r.lost_to_1001);
        let lost_other = sum(|r| r.lost_other);
        let unanswered = sum(|r| r.unanswered);
        let reconnects = sum(|r| r.reconnects);
        let mut closes: BTreeMap<(usize, String), u64> = BTreeMap::new();
        for r in &reports {
            for (code, n) in &r.closes {
                *closes.entry((r.interface, code.clone())).or_default() += n;
            }
        }
        let on_restarted = reports.iter().filter(|r| r.interface == RESTARTED).count() as u64;
        let closes_1001 = closes.get(&(RESTARTED, "1001".to_string())).copied().unwrap_or(0);
        let other_closes: u64 = closes
            .iter()
            .filter(|((iface, code), _)| !(*iface == RESTARTED && code == "1001"))
            .map(|(_, n)| n)
            .sum();
        let clients_losing_1001 = reports.iter().filter(|r| r.lost_to_1001 > 0).count();
        let max_offline = reports.iter().map(|r| r.offline).max().unwrap_or_default();

        // ---- report --------------------------------------------------------------------
        let mut out = String::new();
        let _ = writeln!(out, "\n===== chaos report =====");
        let _ = writeln!(
            out,
            "setup: 2 interfaces, 3 workers, persistent Redis ({:?}); {clients} clients on /ws/echo/, window {window}",
            cluster.redis.topology()
        );
        let _ = writeln!(
            out,
            "faults over {:.1} s: {} worker kill -9 (+ replacement), {} Redis {}, {} interface-{RESTARTED} restart, {} consumer panic, {} channel stopped ({CHANNEL_STOPPED:?} without a worker)",
            chaos_time.as_secs_f64(),
            faults.worker_kills,
            faults.redis_restarts,
            if cluster.redis.is_cluster() { "master failover" } else { "stop/restart" },
            faults.interface_restarts,
            faults.consumer_panics,
            faults.channel_stops
        );
        let _ = writeln!(
            out,
            "  the panicking message's own client, answered by close code: {:?}",
            faults.panic_answers
        );
        for (kind, times) in &faults.recoveries {
            let secs: Vec<String> = times.iter().map(|d| format!("{:.1}", d.as_secs_f64())).collect();
            let _ = writeln!(out, "  every client answered again after {kind}: [{}] s", secs.join(", "));
        }
        let drains: Vec<String> = faults.drains.iter().map(|d| format!("{:.1}", d.as_secs_f64())).collect();
        let _ = writeln!(out, "  interface SIGTERM → exit: [{}] s", drains.join(", "));
        let _ = writeln!(
            out,
            "  machine load average (1 min) at the start / end of the faults: {load_before} / {load_after}"
        );
        let _ = writeln!(
            out,
            "messages: {sent} sent, {answered} answered ({answered_under_chaos} during the faults, {:.0}/s)",
            answered_under_chaos as f64 / chaos_time.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "  duplicates {duplicates}, out of order {out_of_order}, foreign frames {foreign}, unanswered after the quiet period {unanswered}"
        );
        let _ = writeln!(
            out,
            "  lost to the interface restart (in flight at close 1001) {lost_1001}, on {clients_losing_1001} of {on_restarted} clients; lost to other closes {lost_other}"
        );
        let _ = writeln!(
            out,
            "  accounting: sent {sent} = answered + lost + unanswered {}",
            answered + lost_1001 + lost_other + unanswered
        );
        let _ = writeln!(
            out,
            "sockets: {reconnects} reconnects (longest offline total per client {:.1} s); closes by interface and code: {closes:?}",
            max_offline.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "  expected {} closes 1001 on interface-{RESTARTED} ({on_restarted} clients × {} restarts), got {closes_1001}; other closes {other_closes}",
            on_restarted * u64::from(faults.interface_restarts),
            faults.interface_restarts
        );
        let _ = writeln!(out, "redis: echo stream {figures:?}, dead letters {dead_letters:?}");
        if let Some(status) = &status {
            let _ = writeln!(out, "  switchyard status: channels {}", status["channels"]);
        }
        let _ = writeln!(out, "memory (VmRSS): idle → warm-up baseline → after the run (bound)");
        for (name, base) in &baseline {
            let _ = writeln!(
                out,
                "  {name:<12} {:>10} → {:>10} → {:>10} ({})",
                idle.get(name).map_or("-".into(), |&k| mib(k)),
                mib(*base),
                after.get(name).map_or("gone".into(), |&k| mib(k)),
                mib(rss_bound(*base))
            );
        }
        for (name, kib) in after.iter().filter(|(n, _)| !baseline.contains_key(*n)) {
            let _ = writeln!(
                out,
                "  {name:<12} {:>10} (replacement; bound {} from the largest baseline)",
                mib(*kib),
                mib(rss_bound(baseline.values().copied().max().unwrap_or(0)))
            );
        }
        for r in reports.iter().filter(|r| !r.notes.is_empty()).take(10) {
            let _ = writeln!(
                out,
                "  client {} (interface-{}): {}",
                r.client,
                r.interface,
                r.notes.join("; ")
            );
        }

        // ---- invariants ----------------------------------------------------------------
        let mut check = |ok: bool, what: String| {
            if !ok {
                failures.push(what);
            }
        };
        check(duplicates == 0, format!("{duplicates} messages answered twice"));
        check(out_of_order == 0, format!("{out_of_order} answers out of order"));
        check(foreign == 0, format!("{foreign} frames that are no echo of a message in flight"));
        check(unanswered == 0, format!("{unanswered} messages unanswered after the quiet period"));
        check(lost_other == 0, format!("{lost_other} messages lost to closes other than 1001"));
        check(other_closes == 0, format!("{other_closes} sockets closed other than by the interface restart"));
        check(
            closes_1001 == on_restarted * u64::from(faults.interface_restarts),
            format!("{closes_1001} closes 1001, want one per client of interface-{RESTARTED} per restart"),
        );
        check(
            lost_1001 <= closes_1001 * window as u64,
            format!("{lost_1001} lost to 1001: more than the window of each closed socket"),
        );
        check(
            sent == answered + lost_1001 + lost_other + unanswered,
            "message accounting does not add up".into(),
        );
        check(
            reports.iter().all(|r| r.answered > 0),
            "a client got no answer at all".into(),
        );
        check(
            drained.is_some(),
            format!("echo stream not drained within 30 s: {figures:?}"),
        );
        check(
            matches!(dead_letters, Ok(0)),
            format!("dead letters: {dead_letters:?}"),
        );
        check(
            settled.is_some(),
            format!("memory not back within the bound: baseline {baseline:?}, after {after:?}"),
        );
        let slowest_drain = faults.drains.iter().max().copied().unwrap_or_default();
        check(
            slowest_drain < DRAIN_DEADLINE,
            format!("an interface drain took {slowest_drain:?}: it hit its deadline with a message in flight"),
        );
        check(
            faults.panic_answers.keys().all(|code| code == "1011")
                && faults.panic_answers.values().sum::<u32>() == faults.consumer_panics,
            format!(
                "a panicking message's client was not closed with 1011: {:?}",
                faults.panic_answers
            ),
        );
        check(
            cluster.interface(0).is_running(),
            "interface-0 died".into(),
        );
        for (i, w) in cluster.workers.iter_mut().enumerate() {
            if !faults.killed.contains(&i) && !w.is_running() {
                failures.push(format!("{} exited on its own", w.name()));
            }
        }

        if failures.is_empty() {
            let _ = writeln!(out, "RESULT: every invariant held");
        } else {
            let _ = writeln!(out, "RESULT: {} invariant(s) broken:\n  {}", failures.len(), failures.join("\n  "));
        }
        eprintln!("{out}");
        assert!(failures.is_empty(), "chaos invariants broken:\n  {}", failures.join("\n  "));
    })
    .await
}
