//! Python workers reading the packed entries the interface writes (docs/protocol.md, "Packed
//! entries"): 50 connections bursting on the chat counter through one interface, served by
//! Python workers only. Every connection's counts come back in order, nothing is left
//! pending (each packed entry acknowledged once its last message was committed), and the
//! shard streams took fewer entries than the messages sent — so entries did hold several
//! messages and every one of them was answered. (A packed entry with garbage in it, and
//! one with a message that aborts the worker: `python/tests/test_packed.py`.)

use std::time::Duration;

use switchyard_tests::bounded;
use switchyard_tests::load::bursts_answered_in_order;
use switchyard_tests::python::python_stack;
use switchyard_tests::stack::Probe;

const CONNS: usize = 50;
const BURST: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_workers_answer_every_message_of_packed_entries_in_order() {
    bounded(Duration::from_secs(120), async {
        let mut stack = python_stack("py-packed").start().await;
        stack.spawn_python_worker(&[]);
        stack.spawn_python_worker(&[]);
        stack.wait_workers_live(Probe::Chat).await;
        let mut clients = Vec::new();
        for _ in 0..CONNS {
            clients.push(stack.ws("/ws/chat/").await);
        }
        bursts_answered_in_order(clients, BURST, Duration::from_secs(30)).await;

        let added = stack.entries_once_settled("chat").await;
        let sent = CONNS as u64 * BURST;
        eprintln!("[test] {sent} chat messages (plus connects and closes) in {added} entries");
        assert!(
            added < sent,
            "{added} entries for {sent} messages: the interface packed none (is --pack-entries on?)"
        );
        for w in &mut stack.workers {
            assert!(w.is_running(), "{} died", w.name());
        }
    })
    .await
}
