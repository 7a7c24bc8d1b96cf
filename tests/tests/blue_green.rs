//! Blue/green through a real Traefik v3 over `wss://`, driven by `scripts/blue-green`, and
//! `--trusted-proxy` behind it:
//! - 300 chat clients send numbered messages during a promote: every one ends on green with
//!   its count continuing — nothing lost or repeated (a client resends what was unanswered
//!   at the 1001);
//! - a green that fails its gate never gets traffic, and the command exits non-zero naming
//!   the check; a green that dies after the switch is rolled back automatically;
//! - new workers are started when their version changes, the old ones stopped after it;
//! - behind Traefik the interface sees the client's address (scope, per-IP limit, logs),
//!   and forwarding headers from anyone else are ignored.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::Value;
use switchyard_tests::supervisor::repo_root;
use switchyard_tests::traefik::{TlsClient, Traefik, WssError};
use switchyard_tests::{binary, bounded, eventually, http, ports::free_port, Stack, INTERFACE_BIN};
use tokio_tungstenite::tungstenite::Message;

/// A CA and a certificate for 127.0.0.1 signed by it; returns (ca.pem, cert, key) paths.
fn make_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "blue-green test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("params");
    let cert = params.signed_by(&key, &ca, &ca_key).expect("sign");
    let paths = (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&paths.0, ca.pem()).expect("write");
    std::fs::write(&paths.1, format!("{}{}", cert.pem(), ca.pem())).expect("write");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write");
    paths
}

/// Redis, workers, Traefik, and the environment `scripts/blue-green` runs with.
struct Setup {
    /// Redis and the workers (its own interface is not used: the script starts them).
    _stack: Stack,
    traefik: Traefik,
    tls: TlsClient,
    env: BTreeMap<String, String>,
    state_dir: PathBuf,
}

impl Setup {
    async fn start(name: &str, interface_args: &str) -> Setup {
        let stack = Stack::builder(name).workers(2).start().await;
        let dir = stack.dir.path().to_path_buf();
        let (ca, cert, key) = make_cert(&dir);
        let traefik = Traefik::start(&dir, &cert, &key).await;
        let tls = TlsClient::new(&std::fs::read_to_string(&ca).expect("ca"), traefik.https_port).expect("tls");
        let state_dir = dir.join("blue-green");
        let redis = stack.redis.client_args().join(" ");
        let env: BTreeMap<String, String> = [
            ("BG_STATE_DIR", state_dir.display().to_string()),
            ("BG_DYNAMIC_DIR", traefik.dynamic_dir.display().to_string()),
            ("BG_BLUE_BIND", format!("127.0.0.1:{}", free_port())),
            ("BG_GREEN_BIND", format!("127.0.0.1:{}", free_port())),
            ("BG_PUBLIC_URL", traefik.url()),
            ("BG_CA_FILE", ca.display().to_string()),
            ("BG_INTERFACE_BIN", binary(INTERFACE_BIN).display().to_string()),
            (
                "BG_INTERFACE_ARGS",
                format!("{redis} --prefix switchyard --trusted-proxy 127.0.0.1/32 {interface_args}"),
            ),
            ("BG_BASELINE_SECONDS", "2".into()),
            ("BG_WATCH_SECONDS", "5".into()),
            // Latency on a shared 2-core machine is noise; the p99 rule is not what these
            // tests are about (health checks and error rate are).
            ("BG_P99_FLOOR_MS", "5000".into()),
            ("BG_GATE_TIMEOUT", "20".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Setup {
            _stack: stack,
            traefik,
            tls,
            env,
            state_dir,
        }
    }

    async fn script(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
        let mut cmd = tokio::process::Command::new(repo_root().join("scripts/blue-green"));
        cmd.args(args)
            .envs(&self.env)
            .envs(extra_env.iter().copied())
            .env_remove("REDIS_URL")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .expect("scripts/blue-green took over 120 s")
            .expect("run scripts/blue-green");
        eprintln!(
            "$ scripts/blue-green {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn state(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.state_dir.join("state.json")).unwrap_or_default())
            .unwrap_or(Value::Null)
    }

    fn colour(&self, colour: &str) -> Value {
        self.state()["colours"][colour].clone()
    }

    fn active_file(&self) -> String {
        std::fs::read_to_string(self.traefik.dynamic_dir.join("active.yml")).unwrap_or_default()
    }

    /// Which interface answers `/readyz` through Traefik.
    async fn answered_by(&self) -> Option<String> {
        let (status, body) = self.tls.get(LOOPBACK, "/readyz", &[]).await.ok()?;
        let body: Value = serde_json::from_str(&body).ok()?;
        (status == 200).then(|| body["interface"].as_str().unwrap_or_default().to_owned())
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // The script starts interfaces and workers in sessions of their own: stop what it left.
        let state = self.state();
        let colours = state["colours"].as_object().cloned().unwrap_or_default();
        let workers = state["workers"].as_array().cloned().unwrap_or_default();
        for entry in colours.values().chain(workers.iter()) {
            if let Some(pid) = entry["pid"].as_i64() {
                // SAFETY: kill(2) on a pid the script recorded; at worst it is gone.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
    }
}

const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));

/// What one chat client saw.
#[derive(Debug, Default)]
struct Tally {
    answered: u64,
    reconnects: u64,
    problems: Vec<String>,
}

/// A chat client through Traefik: sends numbered messages one at a time, checks that every
/// answer is the next count, reconnects with its session_uuid on 1001 and resends what was
/// unanswered, until `stop` is set and it has `min_after` answers since its last reconnect.
async fn chat_client(tls: TlsClient, session: String, stop: Arc<AtomicBool>, pace: Duration) -> Tally {
    let mut tally = Tally::default();
    let path = format!("/ws/chat/?session_uuid={session}");
    let mut since_reconnect = 0u64;
    'connection: loop {
        let mut ws = loop {
            match tls.websocket(LOOPBACK, &path).await {
                Ok(ws) => break ws,
                Err(WssError::Status(status)) if status >= 500 => {}
                Err(error) => tally.problems.push(format!("connect: {error}")),
            }
            if tally.problems.len() > 20 {
                return tally;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        loop {
            if stop.load(Ordering::Relaxed) && since_reconnect >= 3 {
                let _ = ws.close(None).await;
                return tally;
            }
            if ws
                .send(Message::text(format!("m{}", tally.answered + 1)))
                .await
                .is_err()
            {
                tally.reconnects += 1;
                since_reconnect = 0;
                continue 'connection;
            }
            // Until the answer: skip heartbeats; a goodbye and a close mean "resend elsewhere".
            loop {
                let frame = tokio::time::timeout(Duration::from_secs(30), ws.next()).await;
                let text = match frame {
                    Ok(Some(Ok(Message::Text(text)))) => text,
                    Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => {
                        tally.reconnects += 1;
                        since_reconnect = 0;
                        continue 'connection;
                    }
                    Ok(Some(Ok(_))) => continue,
                    Err(_) => {
                        tally
                            .problems
                            .push(format!("no answer to m{} in 30 s", tally.answered + 1));
                        return tally;
                    }
                };
                let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if let Some(count) = value["count"].as_u64() {
                    if count != tally.answered + 1 {
                        tally
                            .problems
                            .push(format!("answer {count} after {} answers", tally.answered));
                    }
                    tally.answered = count;
                    since_reconnect += 1;
                    break;
                }
                if value["bye"] == true && value["total"].as_u64() != Some(tally.answered) {
                    tally.problems.push(format!(
                        "goodbye total {} after {} answers",
                        value["total"], tally.answered
                    ));
                }
            }
            tokio::time::sleep(pace).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_clients_move_to_green_during_a_promote_losing_nothing() {
    bounded(Duration::from_secs(240), async {
        let setup = Setup::start("bg-promote", "").await;
        let deployed = setup.script(&["deploy"], &[]).await;
        assert!(deployed.status.success(), "first deploy (blue) failed");
        let blue = setup.colour("blue");
        assert_eq!(setup.answered_by().await.as_deref(), blue["id"].as_str());

        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..300)
            .map(|i| {
                tokio::spawn(chat_client(
                    setup.tls.clone(),
                    format!("bg-{i}"),
                    stop.clone(),
                    Duration::from_millis(700),
                ))
            })
            .collect();
        let blue_addr = blue["bind"].as_str().expect("blue bind").to_owned();
        assert!(
            holds_connections(&blue_addr, 300).await,
            "300 clients not connected to blue through Traefik"
        );

        let promoted = setup.script(&["promote"], &[]).await;
        assert!(promoted.status.success(), "promote failed");
        let summary = summary(&promoted);
        eprintln!("promote summary: {summary}");
        let green = setup.colour("green");
        assert_eq!(setup.state()["active"], "green");
        assert!(setup.active_file().contains("service: switchyard-green"));
        let green_addr = green["bind"].as_str().expect("green bind").to_owned();
        assert!(
            holds_connections(&green_addr, 300).await,
            "the 300 clients did not all reconnect to green"
        );
        assert!(
            http::status(&blue_addr, "/healthz").await.is_none(),
            "blue still answers after its drain"
        );

        stop.store(true, Ordering::Relaxed);
        let mut moved = 0;
        for (i, client) in clients.into_iter().enumerate() {
            let tally = client.await.expect("client task");
            assert!(tally.problems.is_empty(), "client {i}: {:?}", tally.problems);
            assert!(tally.answered >= 3, "client {i}: {tally:?}");
            moved += usize::from(tally.reconnects >= 1);
        }
        assert_eq!(moved, 300, "every client was moved by the drain");
        eprintln!(
            "switch time (configuration written → first answer from green): {} ms",
            summary["switch_ms"]
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_gate_never_gets_traffic_and_a_green_that_dies_is_rolled_back() {
    bounded(Duration::from_secs(240), async {
        let setup = Setup::start("bg-rollback", "").await;
        assert!(setup.script(&["deploy"], &[]).await.status.success());
        let blue_id = setup.colour("blue")["id"].as_str().expect("blue id").to_owned();
        let mut chat = setup
            .tls
            .websocket(LOOPBACK, "/ws/chat/?session_uuid=stays")
            .await
            .expect("wss");

        // A green whose Redis is unreachable: /readyz 503, so its gate fails.
        let bad = format!(
            "--redis-url redis://127.0.0.1:{}/ --prefix switchyard --trusted-proxy 127.0.0.1/32",
            free_port()
        );
        let refused = setup
            .script(&["promote"], &[("BG_INTERFACE_ARGS", &bad), ("BG_GATE_TIMEOUT", "4")])
            .await;
        assert_eq!(refused.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("gate failed for green: /readyz"), "{stderr}");
        assert!(setup.active_file().contains("service: switchyard-blue"));
        assert_eq!(setup.answered_by().await.as_deref(), Some(blue_id.as_str()));
        let green_pid = setup.colour("green")["pid"].as_i64().expect("green pid");
        assert!(!running(green_pid), "the failed green still runs");

        // A green that passes its gate and dies once Traefik routes to it: rolled back, once
        // by the health checks (probes through Traefik too slow to count), once by the error
        // rate through Traefik (health checks too slow to count).
        let rules = [
            (
                "consecutive failed health checks of green",
                [
                    ("BG_PROBE_INTERVAL", "0.3"),
                    ("BG_HEALTH_INTERVAL", "0.25"),
                    ("BG_WATCH_SECONDS", "15"),
                ],
            ),
            (
                "error rate",
                [
                    ("BG_PROBE_INTERVAL", "0.02"),
                    ("BG_HEALTH_INTERVAL", "1000"),
                    ("BG_WATCH_SECONDS", "15"),
                ],
            ),
        ];
        for (reason, env) in rules {
            let watcher = {
                let state_file = setup.state_dir.join("state.json");
                // The green of an earlier round (the state file still names it until the
                // script starts) is not the one to kill.
                let earlier = setup.colour("green")["id"].clone();
                tokio::spawn(async move {
                    // Once the script saw Traefik answer from green (it records that), kill green.
                    let green = eventually(Duration::from_secs(90), || async {
                        let state: Value =
                            serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap_or_default()).ok()?;
                        let entry = &state["colours"]["green"];
                        (state["switched"]["colour"] == "green"
                            && state["switched"]["id"] == entry["id"]
                            && entry["id"] != earlier)
                            .then(|| entry["pid"].as_i64())
                            .flatten()
                    })
                    .await;
                    if let Some(pid) = green {
                        // SAFETY: the green interface the script started.
                        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    }
                    green.is_some()
                })
            };
            let rolled = setup.script(&["promote"], &env).await;
            assert!(watcher.await.expect("watcher"), "Traefik never routed to green");
            assert_eq!(rolled.status.code(), Some(3), "promote did not roll back");
            let stderr = String::from_utf8_lossy(&rolled.stderr);
            assert!(stderr.contains("rolled back: ") && stderr.contains(reason), "{stderr}");
            assert!(setup.active_file().contains("service: switchyard-blue"));
            assert_eq!(setup.state()["active"], "blue");
            let back = eventually(Duration::from_secs(10), || async {
                (setup.answered_by().await.as_deref() == Some(blue_id.as_str())).then_some(())
            })
            .await;
            assert!(back.is_some(), "Traefik does not route to blue after the rollback");
        }
        // The client on blue never noticed.
        for n in 1..=2u64 {
            chat.send(Message::text("still here")).await.expect("send");
            loop {
                let frame = tokio::time::timeout(Duration::from_secs(15), chat.next()).await;
                let Ok(Some(Ok(Message::Text(text)))) = frame else {
                    panic!("the client on blue lost its socket: {frame:?}");
                };
                if let Some(count) = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["count"].as_u64())
                {
                    assert_eq!(count, n);
                    break;
                }
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_traefik_the_interface_sees_the_client_address_and_ignores_spoofing() {
    bounded(Duration::from_secs(120), async {
        let setup = Setup::start("bg-proxy", "--max-connections-per-ip 2").await;
        assert!(setup
            .script(&["deploy"], &[("RUST_LOG", "info,switchyard_interface=debug")])
            .await
            .status
            .success());
        let client_of = |body: String| -> String {
            serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)["client"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        // Through Traefik: the address Traefik got the request from.
        let (status, body) = setup.tls.get(a, "/api/example/", &[]).await.expect("GET");
        assert_eq!(status, 200, "{body}");
        assert!(client_of(body).starts_with("127.0.0.2:"));
        // A client's own X-Forwarded-For is not believed (Traefik replaces it).
        let (_, body) = setup
            .tls
            .get(b, "/api/example/", &[("X-Forwarded-For", "6.6.6.6")])
            .await
            .expect("GET");
        assert!(client_of(body).starts_with("127.0.0.3:"));
        // Straight to the interface from an untrusted peer: the header is ignored.
        let blue = setup.colour("blue")["bind"].as_str().expect("bind").to_owned();
        let direct = http_get_from(a, &blue, "/api/example/", "X-Forwarded-For: 6.6.6.6\r\n").await;
        assert!(client_of(direct).starts_with("127.0.0.2:"));

        // The per-IP limit counts clients, not Traefik: two from a, the third refused, b fine.
        let _one = setup.tls.websocket(a, "/ws/echo/").await.expect("first from a");
        let _two = setup.tls.websocket(a, "/ws/echo/").await.expect("second from a");
        match setup.tls.websocket(a, "/ws/echo/").await {
            Err(WssError::Status(429)) => {}
            other => panic!("third from a: expected 429, got {:?}", other.map(|_| "open")),
        }
        let _other = setup.tls.websocket(b, "/ws/echo/").await.expect("first from b");

        // And the logs name the client.
        let log = std::fs::read_to_string(setup.state_dir.join("interface-blue.log")).unwrap_or_default();
        let log = switchyard_tests::process::strip_ansi(&log);
        assert!(
            log.contains("client=127.0.0.2"),
            "no client=127.0.0.2 in the interface log"
        );
    })
    .await
}

/// Waits (up to 60 s) until the interface at `addr` holds `n` connections.
async fn holds_connections(addr: &str, n: u64) -> bool {
    eventually(Duration::from_secs(60), || async {
        let status = http::get(addr, "/status").await.ok()?;
        let status: Value = serde_json::from_str(&status.body).ok()?;
        (status["connections"].as_u64() == Some(n)).then_some(())
    })
    .await
    .is_some()
}

/// The JSON summary `promote` prints last.
fn summary(out: &Output) -> Value {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null)
}

/// Whether a process runs (a zombie nobody reaped yet does not).
fn running(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// A plain HTTP GET from a chosen local address (not through Traefik); the body.
async fn http_get_from(from: IpAddr, addr: &str, path: &str, extra: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind((from, 0).into()).expect("bind");
    let mut tcp = socket.connect(addr.parse().expect("addr")).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.expect("read");
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// Switches back and forth (`rollback` after `deploy`): each one moves the traffic to the other
/// colour, and the script reports how long it took, configuration written → first answer
/// through Traefik from the new colour. The time is printed, not asserted (a benchmark's job:
/// docs/benchmarks.md, "Blue/green switch"); `BG_SWITCHES=10` measures it:
/// `BG_SWITCHES=10 cargo nextest run -p switchyard-tests --test blue_green switch_time --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_time() {
    let switches: usize = std::env::var("BG_SWITCHES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let setup = Setup::start("bg-switch-time", "").await;
    assert!(setup.script(&["deploy"], &[]).await.status.success());
    let mut times = Vec::new();
    let mut active = setup.state()["active"].as_str().map(str::to_owned);
    for _ in 0..switches {
        let out = setup
            .script(
                &["rollback"],
                &[("BG_BASELINE_SECONDS", "0.5"), ("BG_WATCH_SECONDS", "0.5")],
            )
            .await;
        assert!(out.status.success());
        let now = setup.state()["active"].as_str().map(str::to_owned);
        assert_ne!(now, active, "a switch left the traffic on the same colour");
        active = now;
        let took = summary(&out)["switch_ms"].as_f64().expect("switch_ms");
        assert!(took > 0.0, "no switch time reported");
        times.push(took);
    }
    times.sort_by(f64::total_cmp);
    eprintln!(
        "switch time over {} switches: min {:.1} ms, median {:.1} ms, max {:.1} ms ({times:?})",
        times.len(),
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

/// Workers follow their version: `deploy` starts `BG_WORKERS` workers when the worker binary
/// reports another `--version` than the running ones (none the first time), leaves them alone
/// when it is the same, and `promote` stops the old ones once the new colour took over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_worker_versions_are_started_and_the_old_ones_stopped_after_the_promote() {
    bounded(Duration::from_secs(240), async {
        let setup = Setup::start("bg-workers", "").await;
        let worker = binary(switchyard_tests::WORKER_BIN).display().to_string();
        // The same binary, announcing another version.
        let wrapper = setup.state_dir.with_file_name("worker-next");
        std::fs::write(
            &wrapper,
            format!("#!/bin/sh\n[ \"$1\" = --version ] && {{ echo 'switchyard-worker 9.9.9-next'; exit 0; }}\nexec {worker} \"$@\"\n"),
        )
        .expect("write wrapper");
        std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let redis = setup.env["BG_INTERFACE_ARGS"]
            .split(" --prefix")
            .next()
            .expect("redis args")
            .to_owned();
        let workers_env = [
            ("BG_WORKERS", "1"),
            ("BG_WORKER_BIN", worker.as_str()),
            ("BG_WORKER_ARGS", &format!("{redis} --prefix switchyard")),
        ];
        assert!(setup.script(&["deploy"], &workers_env).await.status.success());
        let pids = |state: &Value| -> Vec<(i64, String)> {
            state["workers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|w| (w["pid"].as_i64().unwrap_or(0), w["version"].as_str().unwrap_or("").to_owned()))
                .collect()
        };
        let first = pids(&setup.state());
        assert_eq!(first.len(), 1, "{first:?}");
        assert!(running(first[0].0));

        // Same version: no new worker.
        assert!(setup.script(&["promote"], &workers_env).await.status.success());
        assert_eq!(pids(&setup.state()), first);

        // Another version: a new worker, and the old one stopped after the switch.
        let wrapper = wrapper.display().to_string();
        let promoted = setup
            .script(&["promote", "--worker-bin", &wrapper], &workers_env)
            .await;
        assert!(promoted.status.success());
        let now = pids(&setup.state());
        assert_eq!(now.len(), 1, "{now:?}");
        assert_eq!(now[0].1, "switchyard-worker 9.9.9-next");
        assert!(running(now[0].0), "the new worker is not running");
        assert!(!running(first[0].0), "the old worker still runs");
        // And the new worker serves: a chat round trip through Traefik.
        let mut chat = setup.tls.websocket(LOOPBACK, "/ws/chat/?session_uuid=w").await.expect("wss");
        chat.send(Message::text("hi")).await.expect("send");
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(15), chat.next()).await;
            let Ok(Some(Ok(Message::Text(text)))) = frame else {
                panic!("no answer: {frame:?}");
            };
            if text.contains("count") {
                break;
            }
        }
    })
    .await
}
