//! The reply reader: one task, one Redis connection, every worker answer.
//!
//! Workers append answers to this interface's reply stream. A single task
//! reads it with `XREAD BLOCK` on a dedicated connection (never the shared
//! one), many entries per call, and hands each reply to its connection's
//! mailbox. Entries it has read are trimmed, so the stream stays short.

use std::sync::Arc;
use std::time::Duration;

use switchyard_protocol::redis_conn::{Backoff, RedisClient};
use switchyard_protocol::stream::{parse_read_reply, EntryId};
use switchyard_protocol::{decode, Reply};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::bus::registry::ConnEvent;
use crate::state::Shared;

const BLOCK: Duration = Duration::from_millis(1000);
const TRIM_EVERY: Duration = Duration::from_millis(200);
const READ_COUNT: usize = 1024;

/// Reads the reply stream until the process ends.
pub async fn run(client: RedisClient, shared: Arc<Shared>) {
    let stream = shared.keys.reply_stream(&shared.id);
    let mut last = EntryId::ZERO;
    let mut trimmed_up_to = EntryId::ZERO;
    let mut last_trim = Instant::now();
    // The trim under way, if any: one at a time, never waited for.
    let mut trimming: Option<JoinHandle<()>> = None;
    let mut backoff = Backoff::default();
    loop {
        let mut con = match client.blocking(BLOCK).await {
            Ok(con) => con,
            Err(error) => {
                tracing::warn!(%error, "reply reader cannot reach Redis; retrying");
                backoff.wait().await;
                continue;
            }
        };
        loop {
            let reply: redis::RedisResult<redis::Value> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&stream)
                .arg(last.to_string())
                .query_async(&mut con)
                .await;
            let value = match reply {
                Ok(value) => value,
                Err(error) => {
                    shared.metrics.redis_errors.inc();
                    tracing::warn!(%error, "reply stream read failed; reconnecting");
                    break;
                }
            };
            backoff.reset();
            for batch in parse_read_reply(value) {
                for entry in batch.entries {
                    if let Some(id) = EntryId::parse(&entry.id) {
                        last = last.max(id);
                    }
                    let mut payloads = entry.payloads().peekable();
                    if payloads.peek().is_none() {
                        shared.metrics.error("bad_reply");
                        tracing::error!(entry = entry.id, "reply stream entry without payload field; dropped");
                    }
                    for payload in payloads {
                        dispatch(&shared, &entry.id, payload);
                    }
                }
            }
            let idle = trimming.as_ref().is_none_or(JoinHandle::is_finished);
            if idle && last > trimmed_up_to && last_trim.elapsed() >= TRIM_EVERY {
                trimming = Some(trim(&shared, &stream, last.next()));
                trimmed_up_to = last;
                last_trim = Instant::now();
            }
        }
        backoff.wait().await;
    }
}

fn dispatch(shared: &Shared, id: &str, payload: &[u8]) {
    let reply = match decode::<Reply>(payload) {
        Ok(reply) => reply,
        Err(error) => {
            shared.metrics.error("bad_reply");
            tracing::error!(entry = id, %error, "undecodable reply on the reply stream; dropped");
            return;
        }
    };
    let conn = reply.conn;
    if !shared.registry.deliver(conn, ConnEvent::Reply(Box::new(reply))) {
        tracing::debug!(conn, "reply for a connection that is gone");
    }
}

/// Removes the entries already read, on the shared connection, in a task of
/// its own so reading goes on meanwhile.
fn trim(shared: &Arc<Shared>, stream: &str, below: EntryId) -> JoinHandle<()> {
    let mut con = shared.redis.clone();
    let stream = stream.to_owned();
    tokio::spawn(async move {
        let trimmed: redis::RedisResult<u64> = redis::cmd("XTRIM")
            .arg(&stream)
            .arg("MINID")
            .arg(below.to_string())
            .query_async(&mut con)
            .await;
        if let Err(error) = trimmed {
            tracing::debug!(%error, "reply stream trim failed; next trim catches up");
        }
    })
}
