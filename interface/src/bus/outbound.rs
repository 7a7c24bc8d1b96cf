//! Outbound batching: many connections' messages, one Redis round trip.
//!
//! Connection tasks hand their messages to one batcher task. It takes all that
//! is queued (up to a batch size), sends the XADDs as one pipeline, and tells
//! each sender whether its message is on the stream. While Redis is away it
//! holds the batch and retries; a message that has waited `--redis-hold` is
//! given up so its connection can close with 1013, the younger ones are
//! retried. Each attempt is cut at the oldest message's deadline: a frozen
//! Redis (no answer at all) would otherwise stretch the hold to the response
//! timeout, and messages queued behind a failing batch would wait twice.
//!
//! On a Redis Cluster the batch goes out as one pipeline per hash slot (each
//! channel shard has its own), all at once; a slot whose node is failing over
//! holds only its own messages. With `--redis-wait-replicas N` a message counts
//! as appended once N replicas have it (`WAIT`), so a failover cannot lose it.
//!
//! The messages of a batch bound for one channel shard go out as one entry, an
//! `m` field each (`--pack-entries`, docs/protocol.md "Packed entries"): one
//! `XADD` for Redis to run, one entry for a worker to read and acknowledge.
//!
//! A retried batch may append a message twice; workers apply each effect of a
//! message once and the interface applies each `done` once (docs/protocol.md).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use switchyard_protocol::redis_conn::{wait_for_replicas, Backoff, Redis, SlotBatch};
use switchyard_protocol::stream::EntryId;
use switchyard_protocol::PAYLOAD_FIELD;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::bus::backlog::Backlogs;
use crate::metrics::Metrics;

const MAX_BATCH: usize = 512;
/// Most messages in one packed entry: a worker reads entries, so a larger one would hand
/// one worker more than its share. At 1,000 busy connections a flush holds about 130
/// messages per shard (docs/benchmarks.md, "Packed entries").
const MAX_PACKED: usize = 128;
/// Most payload bytes in one packed entry (a single larger message has an entry of its own).
const MAX_PACKED_BYTES: usize = 256 * 1024;
/// Shortest attempt at appending a batch, however late it is.
const MIN_ATTEMPT: Duration = Duration::from_millis(200);
/// How long an append waits for `--redis-wait-replicas` replicas.
const WAIT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a sender learns: the entry id once its message is on the stream,
/// `None` (or a dropped sender) when it could not be appended.
pub type Appended = oneshot::Receiver<Option<EntryId>>;

struct Item {
    /// `None` marks a flush request: acknowledged once everything before it is sent.
    stream: Option<Arc<str>>,
    /// The encoded message; shared, so a connection can keep it for a redelivery without a copy.
    payload: Bytes,
    ack: Option<oneshot::Sender<Option<EntryId>>>,
    queued: Instant,
}

/// Handle for enqueueing messages.
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::UnboundedSender<Item>,
    /// The channels' backlogs, once known: a backlogged channel stops packing.
    backlogs: Arc<OnceLock<Arc<Backlogs>>>,
}

/// How appends are made.
#[derive(Clone)]
pub struct Settings {
    /// How long a message is held through a Redis outage (`--redis-hold`).
    pub hold: Duration,
    /// Replicas an append waits for (`--redis-wait-replicas`).
    pub wait_replicas: u32,
    /// Messages bound for one stream share an entry (`--pack-entries`).
    pub pack: bool,
}

impl Outbound {
    /// Starts the batcher task in `tasks`; it ends when every handle is
    /// dropped and the queue is flushed.
    pub fn start(con: Redis, settings: Settings, metrics: Arc<Metrics>, tasks: &mut JoinSet<()>) -> Outbound {
        let (tx, rx) = mpsc::unbounded_channel();
        let backlogs = Arc::new(OnceLock::new());
        tasks.spawn(run(con, rx, settings, backlogs.clone(), metrics));
        Outbound { tx, backlogs }
    }

    /// From now on a channel packs only while its backlog allows ([`Backlogs::packs`]).
    pub fn follow_backlogs(&self, backlogs: Arc<Backlogs>) {
        let _ = self.backlogs.set(backlogs);
    }

    /// Appends a message; the receiver yields its entry id once it is on the
    /// stream (`None`, or a dropped sender, when it could not be appended).
    pub fn send(&self, stream: Arc<str>, payload: impl Into<Bytes>) -> Appended {
        let (ack, done) = oneshot::channel();
        let _ = self.tx.send(Item {
            stream: Some(stream),
            payload: payload.into(),
            ack: Some(ack),
            queued: Instant::now(),
        });
        done
    }

    /// Appends a message without waiting (disconnect notices).
    pub fn send_detached(&self, stream: Arc<str>, payload: impl Into<Bytes>) {
        let _ = self.tx.send(Item {
            stream: Some(stream),
            payload: payload.into(),
            ack: None,
            queued: Instant::now(),
        });
    }

    /// Resolves once everything enqueued before the call has been sent (or given up).
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        let marker = Item {
            stream: None,
            payload: Bytes::new(),
            ack: Some(ack),
            queued: Instant::now(),
        };
        if self.tx.send(marker).is_ok() {
            let _ = done.await;
        }
    }
}

async fn run(
    con: Redis,
    mut rx: mpsc::UnboundedReceiver<Item>,
    settings: Settings,
    backlogs: Arc<OnceLock<Arc<Backlogs>>>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Flush markers have nothing to append: acknowledged once the batch is done.
        let (messages, markers): (Vec<Item>, Vec<Item>) = batch.drain(..).partition(|item| item.stream.is_some());
        append_with_retry(&con, messages, &settings, backlogs.get(), &metrics).await;
        metrics.redis_batches.inc();
        for marker in markers {
            acknowledge(marker, Some(EntryId::ZERO));
        }
    }
}

/// Appends the messages, retrying the ones that failed while Redis fails. A
/// message whose own hold has run out is given up (its sender learns
/// `false`); the others are retried. Each connection has at most one message
/// here, so giving one up never reorders another's.
async fn append_with_retry(
    con: &Redis,
    mut pending: Vec<Item>,
    settings: &Settings,
    backlogs: Option<&Arc<Backlogs>>,
    metrics: &Metrics,
) {
    let hold = settings.hold;
    let mut backoff = Backoff::default();
    let mut tried = false;
    while !pending.is_empty() {
        if tried {
            let (expired, kept) = split_expired(pending, hold, Instant::now());
            pending = kept;
            if !expired.is_empty() {
                tracing::error!(
                    refused = expired.len(),
                    "Redis unreachable for longer than --redis-hold; refusing held messages"
                );
                expired.into_iter().for_each(|item| acknowledge(item, None));
            }
            if pending.is_empty() {
                return;
            }
        }
        let (deadline, limit) = attempt_deadlines(&pending, hold, Instant::now());
        let attempt = tokio::time::timeout_at(limit, append(con, &pending, settings, backlogs)).await;
        tried = true;
        let outcomes = attempt.unwrap_or_else(|_| pending.iter().map(|_| Err(timed_out())).collect());
        let mut failed = Vec::new();
        let mut first_error = None;
        for (item, outcome) in pending.into_iter().zip(outcomes) {
            match outcome {
                Ok(id) => acknowledge(item, Some(id)),
                Err(error) => {
                    first_error.get_or_insert(error);
                    failed.push(item);
                }
            }
        }
        pending = failed;
        if let Some(error) = first_error {
            metrics.redis_errors.inc();
            tracing::warn!(%error, held = pending.len(), "Redis append failed; holding the messages and retrying");
            // Wake up for the next message's deadline even in the middle of a backoff.
            let _ = tokio::time::timeout_at(deadline.max(Instant::now()), backoff.wait()).await;
        }
    }
}

/// Splits off the messages whose hold has run out by `now`: (expired, kept).
fn split_expired(pending: Vec<Item>, hold: Duration, now: Instant) -> (Vec<Item>, Vec<Item>) {
    pending.into_iter().partition(|item| item.queued + hold <= now)
}

/// The oldest message's deadline, and how long the next attempt may take: until
/// that deadline, but always one real attempt (`MIN_ATTEMPT`), even for
/// messages that waited in the queue past their hold.
fn attempt_deadlines(pending: &[Item], hold: Duration, now: Instant) -> (Instant, Instant) {
    let deadline = pending.iter().map(|item| item.queued + hold).min().unwrap_or(now);
    (deadline, deadline.max(now + MIN_ATTEMPT))
}

/// One attempt: the XADDs (one pipeline, or one request per stream on a
/// cluster), then `WAIT` on the nodes written to if asked for. The outcome of
/// each message.
async fn append(
    con: &Redis,
    items: &[Item],
    settings: &Settings,
    backlogs: Option<&Arc<Backlogs>>,
) -> Vec<redis::RedisResult<EntryId>> {
    let packs = |stream: &str| settings.pack && backlogs.is_none_or(|b| b.packs(stream, MAX_PACKED as u64));
    let entries = entries_of(items, packs);
    let mut batch = SlotBatch::new();
    for (stream, members) in &entries {
        // Sized up front: built from empty, the command's buffers were reallocated
        // about four times per message.
        let payloads: usize = members
            .iter()
            .map(|&index| PAYLOAD_FIELD.len() + items[index].payload.len())
            .sum();
        let mut xadd = redis::Cmd::with_capacity(3 + 2 * members.len(), "XADD*".len() + stream.len() + payloads);
        xadd.arg("XADD").arg(*stream).arg("*");
        for &index in members {
            xadd.arg(PAYLOAD_FIELD).arg(&items[index].payload[..]);
        }
        batch.add(stream, xadd);
    }
    let written = batch.run(con).await;
    // Each message learns its entry's outcome.
    let mut outcomes: Vec<redis::RedisResult<EntryId>> = items.iter().map(|_| Ok(EntryId::ZERO)).collect();
    for ((_, members), outcome) in entries.iter().zip(written) {
        let outcome = outcome.map(|id| entry_id_of(&id));
        for &index in members {
            outcomes[index] = outcome.clone();
        }
    }
    if settings.wait_replicas > 0 && outcomes.iter().any(Result::is_ok) {
        let written = items
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| outcome.is_ok())
            .filter_map(|(item, _)| item.stream.as_deref());
        if let Err(error) = wait_for_replicas(con, written, settings.wait_replicas, WAIT_TIMEOUT).await {
            for outcome in outcomes.iter_mut() {
                *outcome = Err(error.clone());
            }
        }
    }
    outcomes
}

/// The entries a batch is written as, each a stream and the indices of its messages in
/// `items`, in order: where `packs` says so, the messages bound for one stream share entries
/// of at most [`MAX_PACKED`] messages and [`MAX_PACKED_BYTES`] (docs/protocol.md, "Packed
/// entries"); elsewhere, one entry each.
fn entries_of(items: &[Item], packs: impl Fn(&str) -> bool) -> Vec<(&str, Vec<usize>)> {
    let mut entries: Vec<(&str, Vec<usize>)> = Vec::new();
    // Per stream that packs: its open entry's place in `entries`, and the bytes in it.
    let mut open: Vec<(&str, usize, usize)> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let Some(stream) = item.stream.as_deref() else { continue };
        let size = item.payload.len();
        if let Some(at) = open.iter().position(|(name, _, _)| *name == stream) {
            let (_, entry, bytes) = &mut open[at];
            if entries[*entry].1.len() < MAX_PACKED && *bytes + size <= MAX_PACKED_BYTES {
                entries[*entry].1.push(index);
                *bytes += size;
                continue;
            }
            open.swap_remove(at);
        }
        // Asked once per entry, not per message.
        if packs(stream) {
            open.push((stream, entries.len(), size));
        }
        entries.push((stream, vec![index]));
    }
    entries
}

/// The id an `XADD` answered, read in place (no allocation per message); `0-0`
/// if Redis answered something else (a later stall check then finds it lost).
fn entry_id_of(reply: &redis::Value) -> EntryId {
    let text = match reply {
        redis::Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        redis::Value::SimpleString(text) => Some(text.as_str()),
        _ => None,
    };
    text.and_then(EntryId::parse).unwrap_or(EntryId::ZERO)
}

fn acknowledge(item: Item, outcome: Option<EntryId>) {
    if let Some(ack) = item.ack {
        let _ = ack.send(outcome);
    }
}

fn timed_out() -> redis::RedisError {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer before --redis-hold ran out").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(queued: Instant) -> (Item, Appended) {
        let (ack, done) = oneshot::channel();
        let item = Item {
            stream: Some("s".into()),
            payload: Bytes::new(),
            ack: Some(ack),
            queued,
        };
        (item, done)
    }

    #[test]
    fn only_messages_past_their_hold_are_given_up() {
        let now = Instant::now();
        let hold = Duration::from_secs(10);
        let (old, _) = item(now - Duration::from_secs(11));
        let (exact, _) = item(now - hold);
        let (young, _) = item(now - Duration::from_secs(3));
        let (expired, kept) = split_expired(vec![old, exact, young], hold, now);
        assert_eq!(expired.len(), 2, "held for the hold or longer");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].queued, now - Duration::from_secs(3));
    }

    #[test]
    fn an_attempt_ends_at_the_oldest_deadline_but_is_never_shorter_than_the_minimum() {
        let now = Instant::now();
        let hold = Duration::from_secs(10);
        let (a, _) = item(now - Duration::from_secs(4));
        let (b, _) = item(now - Duration::from_secs(1));
        let (deadline, limit) = attempt_deadlines(&[a, b], hold, now);
        assert_eq!(deadline, now + Duration::from_secs(6), "the oldest message's");
        assert_eq!(limit, deadline);
        // A message that waited past its hold still gets one real attempt.
        let (late, _) = item(now - Duration::from_secs(30));
        let (deadline, limit) = attempt_deadlines(&[late], hold, now);
        assert!(deadline < now);
        assert_eq!(limit, now + MIN_ATTEMPT);
    }

    fn bound(stream: &str, size: usize) -> Item {
        Item {
            stream: Some(stream.into()),
            payload: Bytes::from(vec![b'x'; size]),
            ack: None,
            queued: Instant::now(),
        }
    }

    #[test]
    fn messages_for_one_stream_share_an_entry_in_order() {
        let items = vec![bound("a", 10), bound("b", 10), bound("a", 10), bound("a", 10)];
        assert_eq!(entries_of(&items, |_| true), vec![("a", vec![0, 2, 3]), ("b", vec![1])]);
        let unpacked = entries_of(&items, |_| false);
        assert_eq!(
            unpacked,
            vec![("a", vec![0]), ("b", vec![1]), ("a", vec![2]), ("a", vec![3])]
        );
    }

    #[test]
    fn a_packed_entry_is_bounded_in_messages_and_bytes() {
        let many: Vec<Item> = (0..MAX_PACKED + 1).map(|_| bound("a", 1)).collect();
        let entries = entries_of(&many, |_| true);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].1.len(), MAX_PACKED);
        let large = vec![bound("a", MAX_PACKED_BYTES - 1), bound("a", 2), bound("a", 1)];
        assert_eq!(entries_of(&large, |_| true), vec![("a", vec![0]), ("a", vec![1, 2])]);
    }

    #[test]
    fn each_sender_learns_its_own_outcome() {
        let (ok, mut ok_rx) = item(Instant::now());
        acknowledge(ok, EntryId::parse("1-0"));
        assert_eq!(ok_rx.try_recv(), Ok(EntryId::parse("1-0")));
        let (refused, mut refused_rx) = item(Instant::now());
        acknowledge(refused, None);
        assert_eq!(refused_rx.try_recv(), Ok(None));
    }
}
