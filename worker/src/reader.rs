//! The reader: pulls messages off the served channel streams.
//!
//! One `XREADGROUP` on a dedicated connection reads every served stream at
//! once, never more messages than there are free permits, and hands each to
//! its own task. When the worker is stopping it simply does not read again;
//! its last blocking read ends by itself within the block time, so no message
//! is ever delivered to a reader that is no longer there.

use std::sync::Arc;

use switchyard_protocol::redis_conn::{self, Backoff};
use switchyard_protocol::stream::parse_read_reply;
use switchyard_protocol::WORKER_GROUP;

use crate::handler;
use crate::runtime::{Worker, READ_BLOCK};

const MAX_READ: usize = 256;

pub async fn run(worker: Arc<Worker>) {
    let streams = worker.streams();
    let mut backoff = Backoff::default();
    while !worker.stopping() {
        let mut con = match redis_conn::blocking(&worker.client, READ_BLOCK).await {
            Ok(con) => con,
            Err(error) => {
                tracing::warn!(%error, "reader cannot reach Redis; retrying");
                backoff.wait().await;
                continue;
            }
        };
        if let Err(error) = worker.ensure_groups().await {
            tracing::warn!(%error, "cannot create consumer groups; retrying");
            backoff.wait().await;
            continue;
        }
        while !worker.stopping() {
            // Wait for at least one free permit, then read as many as are free.
            let first = match worker.permits.clone().acquire_owned().await {
                Ok(permit) => permit,
                Err(_) => return,
            };
            let count = (worker.permits.available_permits() + 1).min(MAX_READ);
            let mut command = redis::cmd("XREADGROUP");
            command
                .arg("GROUP")
                .arg(WORKER_GROUP)
                .arg(&worker.consumer)
                .arg("COUNT")
                .arg(count)
                .arg("BLOCK")
                .arg(READ_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&streams);
            for _ in &streams {
                command.arg(">");
            }
            let reply: redis::RedisResult<redis::Value> = command.query_async(&mut con).await;
            let value = match reply {
                Ok(value) => value,
                Err(error) => {
                    tracing::warn!(%error, "read failed; reconnecting");
                    drop(first);
                    break;
                }
            };
            backoff.reset();
            let mut first = Some(first);
            for batch in parse_read_reply(&value) {
                for entry in batch.entries {
                    let permit = match first.take() {
                        Some(permit) => permit,
                        None => match worker.permits.clone().acquire_owned().await {
                            Ok(permit) => permit,
                            Err(_) => return,
                        },
                    };
                    let worker = worker.clone();
                    let stream = batch.stream.clone();
                    tokio::spawn(async move {
                        handler::handle(&worker, &stream, entry).await;
                        drop(permit);
                    });
                }
            }
        }
        backoff.wait().await;
    }
}
