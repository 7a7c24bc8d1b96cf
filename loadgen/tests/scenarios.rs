//! End-to-end checks of the load tool against the in-process reference server.
//!
//! The scenarios must measure correctly against any server speaking the protocol, so they are
//! run here against the reference server, which can also misbehave (skip a count, push
//! heartbeats, drop or repeat a broadcast) — proving that order violations, missed and
//! duplicated deliveries are detected and heartbeats ignored.

use std::net::SocketAddr;
use std::sync::Arc;

use switchyard_loadgen::broadcast::{self, BroadcastArgs, RoomsProtocol};

use switchyard_loadgen::hold::{self, HoldArgs};
use switchyard_loadgen::options::{CommonArgs, RunArgs};
use switchyard_loadgen::reference::{self, Behaviour};
use switchyard_loadgen::rtt::{self, RttArgs};
use switchyard_loadgen::storm::{self, StormArgs};

async fn start_server(behaviour: Behaviour) -> SocketAddr {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    reference::spawn(any, behaviour).await.expect("reference server starts")
}

fn run_args() -> RunArgs {
    RunArgs {
        json: true,
        label: "test".into(),
        pids: vec![],
        connect_concurrency: 50,
        connect_timeout: 5.0,
        setup_timeout: 30.0,
        source_ip_offset: 0,
    }
}

fn common(addr: SocketAddr) -> CommonArgs {
    CommonArgs {
        url: format!("ws://{addr}/ws/chat/"),
        run: run_args(),
    }
}

fn rtt_args(addr: SocketAddr, connections: usize, rate: Option<f64>) -> RttArgs {
    RttArgs {
        common: common(addr),
        connections,
        duration: 1.0,
        warmup: 0.2,
        rate,
        payload_bytes: 64,
        drain_timeout: 2.0,
        also_urls: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_measures_and_sees_no_violations() {
    let addr = start_server(Behaviour {
        skip_at: None,
        heartbeat: true,
        ..Behaviour::default()
    })
    .await;
    let r = rtt::run(rtt_args(addr, 5, None), 2).await.expect("rtt runs");
    assert_eq!(r.connected, 5);
    assert!(r.msgs > 100, "only {} answers", r.msgs);
    assert_eq!(r.order_violations, 0);
    assert_eq!(r.unsolicited, 0);
    assert_eq!(r.errors, 0);
    assert_eq!(r.unanswered, 0);
    assert!(r.latency.p50_us > 0 && r.latency.p50_us <= r.latency.p99_us);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_rate_sends_on_schedule() {
    let addr = start_server(Behaviour {
        skip_at: None,
        heartbeat: false,
        ..Behaviour::default()
    })
    .await;
    let mut args = rtt_args(addr, 4, Some(50.0));
    args.common.run.pids = vec![std::process::id()];
    let r = rtt::run(args, 2).await.expect("rtt runs");
    // 4 connections × 50/s × 1 s window = 200 (± schedule edges).
    assert!((180..=220).contains(&r.msgs), "{} answers in window", r.msgs);
    assert!(
        (180..=220).contains(&r.latency.samples),
        "{} samples",
        r.latency.samples
    );
    assert_eq!(r.order_violations, 0);
    assert_eq!(r.unanswered, 0);
    assert!(r.cpu_us_per_msg.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_count_is_an_order_violation() {
    let addr = start_server(Behaviour {
        skip_at: Some(3),
        heartbeat: false,
        ..Behaviour::default()
    })
    .await;
    let r = rtt::run(rtt_args(addr, 3, None), 2).await.expect("rtt runs");
    assert_eq!(r.order_violations, 3, "one skip per connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_keeps_connections_and_reports_rss() {
    let addr = start_server(Behaviour {
        skip_at: None,
        heartbeat: true,
        ..Behaviour::default()
    })
    .await;
    let args = HoldArgs {
        common: CommonArgs {
            run: RunArgs {
                pids: vec![std::process::id()],
                ..run_args()
            },
            ..common(addr)
        },
        connections: 300,
        hold: 0.3,
        answer_timeout: 5.0,
        payload_bytes: 64,
    };
    let r = hold::run(args, 2).await.expect("hold runs");
    assert_eq!(r.connected, 300);
    assert_eq!(r.dropped_during_hold, 0);
    assert_eq!(r.order_violations, 0);
    assert!(r.kib_per_conn.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_storm_opens_and_closes() {
    let addr = start_server(Behaviour {
        skip_at: None,
        heartbeat: false,
        ..Behaviour::default()
    })
    .await;
    let args = StormArgs {
        common: common(addr),
        duration: 0.5,
        concurrency: 4,
        keep_open: false,
        echo: true,
        max_connections: Some(200),
        source_ips: 4,
    };
    let r = storm::run(args, 2).await.expect("storm runs");
    assert!(r.opened > 0 && r.opened <= 200);
    assert_eq!(r.connect_failures, 0);
    assert_eq!(r.errors, 0);
}

#[tokio::test]
async fn non_loopback_targets_are_refused_before_connecting() {
    let mut args = rtt_args("127.0.0.1:9".parse().expect("addr"), 1, None);
    args.common.url = "ws://192.168.1.1:8000/ws/chat/".into();
    let err = rtt::run(args, 1).await.expect_err("must refuse");
    assert!(format!("{err:#}").contains("non-loopback"));
}

/// Two reference servers sharing one hub of rooms: two "interfaces" on one "Redis".
async fn two_interfaces(second: Behaviour) -> (SocketAddr, SocketAddr) {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let hub = Arc::new(reference::Hub::default());
    let a = reference::spawn_with_hub(any, Behaviour::default(), hub.clone())
        .await
        .expect("first server starts");
    let b = reference::spawn_with_hub(any, second, hub)
        .await
        .expect("second server starts");
    (a, b)
}

fn broadcast_args(urls: Vec<String>, members: usize, broadcasts: usize) -> BroadcastArgs {
    BroadcastArgs {
        urls,
        sender_url: None,
        protocol: RoomsProtocol::SwitchyardRooms,
        room: "bench".into(),
        members,
        broadcasts,
        interval: 20,
        settle: 0.1,
        drain_timeout: 2.0,
        answer_timeout: 5.0,
        run: RunArgs {
            pids: vec![std::process::id()],
            ..run_args()
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_member_on_every_interface_once() {
    let (a, b) = two_interfaces(Behaviour::default()).await;
    let urls = vec![format!("ws://{a}/ws/rooms/"), format!("ws://{b}/ws/rooms/")];
    let r = broadcast::run(broadcast_args(urls, 200, 5), 2)
        .await
        .expect("broadcast runs");
    assert_eq!(r.joined, 200);
    assert_eq!(r.joined_per_url, vec![100, 100]);
    assert_eq!(r.sent, 5);
    assert_eq!(r.expected, 1000);
    assert_eq!(r.delivered, 1000);
    assert_eq!((r.missing, r.duplicates, r.incomplete_broadcasts), (0, 0, 0));
    assert_eq!((r.seq_gaps, r.seq_repeats, r.seq_absent), (0, 0, 0));
    assert_eq!(
        (r.corrupt, r.foreign, r.error_frames, r.unexpected_frames),
        (0, 0, 0, 0)
    );
    assert_eq!(r.last_delivery.samples, 5);
    assert_eq!(r.member_latency.samples, 1000);
    assert!(r.first_delivery.p50_us <= r.last_delivery.p50_us);
    assert!(r.cpu_us_per_broadcast.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_and_a_repeated_broadcast_are_counted() {
    // The second interface loses broadcast seq 2 and delivers seq 3 twice to its 50 members.
    let (a, b) = two_interfaces(Behaviour {
        drop_seq: Some(2),
        repeat_seq: Some(3),
        ..Behaviour::default()
    })
    .await;
    let urls = vec![format!("ws://{a}/ws/rooms/"), format!("ws://{b}/ws/rooms/")];
    let r = broadcast::run(broadcast_args(urls, 100, 4), 2)
        .await
        .expect("broadcast runs");
    assert_eq!(r.expected, 400);
    assert_eq!(r.missing, 50);
    assert_eq!(r.duplicates, 50);
    assert_eq!(r.incomplete_broadcasts, 1);
    assert_eq!(r.seq_gaps, 50);
    assert_eq!(r.seq_repeats, 50);
    // A broadcast that did not reach everybody still has a last delivery (over those it reached).
    assert_eq!(r.last_delivery.samples, 4);
}

#[tokio::test]
async fn broadcast_refuses_more_members_than_one_process_holds() {
    let mut args = broadcast_args(vec!["ws://127.0.0.1:9/ws/rooms/".into()], 25_000, 1);
    args.run.pids.clear();
    let err = broadcast::run(args, 1).await.expect_err("must refuse");
    let text = format!("{err:#}");
    assert!(
        text.contains("several processes") || text.contains("processes"),
        "{text}"
    );
    assert!(text.contains("--source-ip-offset"), "{text}");
}
