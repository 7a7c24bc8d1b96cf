//! Handling one message: decode, run the consumer, commit.
//!
//! Garbage (undecodable entries, unknown versions, bad reply addresses) goes to
//! the dead-letter stream with a log line; the worker carries on. A Redis
//! error while handling or committing is retried with backoff — the consumer
//! runs again from scratch, which is safe because nothing was committed. A
//! consumer's panic or error is absorbed ([`absorb`]): the connection is
//! closed with 1011 (HTTP: answered 500) through the normal commit.
//! An event of the wrong kind for the channel (an `http.request` on a
//! WebSocket channel, say) is a routing mistake and is dead-lettered.
//!
//! The delivery limit: an entry handed out before (re-read from this worker's
//! pending list, or claimed from a dead or stuck one) has its delivery count
//! read first. Past `--max-deliveries` every earlier handling died or stalled
//! without a commit — a consumer that aborts the process, say, which no
//! `catch_unwind` can absorb — so it is not run again: it is dead-lettered
//! with its count, and its connection gets the same 1011 / 500 through the
//! normal commit (whose `done` releases the connection's next message).
//!
//! Each message is handled inside a `message{channel, conn, seq, event}` span,
//! so every log line names the connection (or request) it is about.
//!
//! Every message is a task of its own, and a task is as large as the deepest wait of
//! the path it may take. So the rare paths (dead-lettering, giving up, the delivery count,
//! HTTP) wait in a box of their own, and the context is boxed and gone before the
//! commit's wait: a message's task went from 4.6 KiB to 1.6 KiB, copied and allocated
//! once per message (the workers' CPU per message a median 18% lower in 20 A/B pairings,
//! docs/benchmarks.md, "Smaller tasks").

use switchyard_protocol::groups;
use switchyard_protocol::redis_conn::Backoff;
use switchyard_protocol::stream;
use switchyard_protocol::{decode, encode, Action, ChannelMessage, Event, Reply, ReplyAddress, WORKER_GROUP};
use tokio::time::Instant;
use tracing::Instrument;

use switchyard_protocol::close;

use crate::api::app::ChannelApp;
use crate::api::consumer::{Message, WebSocketConsumer};
use crate::api::context::{Context, Scope};
use crate::api::session::SessionWrite;
use crate::runtime::absorb::{self, Failure};
use crate::runtime::commit::{self, BodyOp, Commit, Outcome};
use crate::runtime::packed::Incoming;
use crate::runtime::read_batch::slot::Preload;
use crate::runtime::{http_request, Worker};

/// How an entry reached its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Read as new (`>`).
    First,
    /// Re-read from this live process's own pending list after a read whose
    /// answer was lost: no handler had it, none died on it, so Redis's
    /// delivery count (raised by every such re-read) says nothing about it.
    /// An earlier life may still have committed part of it.
    LostRead,
    /// Handed out before to a handler that may have died: read back by a
    /// restarted worker, or claimed from a dead one. The delivery limit
    /// (`--max-deliveries`) applies.
    AfterDeath,
    /// As `AfterDeath`, for a message packed in one entry with the suspect
    /// (`redelivery`): the entry's delivery count is the suspect's doing, so the
    /// limit does not apply.
    BesideSuspect,
}

/// Handles one message (see [`Delivery`] for what its history means); `preload`: its share
/// of a read batch, for the first attempt.
pub async fn handle(
    worker: &Worker,
    stream: &str,
    incoming: Incoming,
    delivery: Delivery,
    preload: Option<Box<Preload>>,
) {
    let redelivered = delivery != Delivery::First;
    let Some((channel, app)) = worker.channel_of(stream) else {
        tracing::error!(stream, "entry from a stream this worker does not serve");
        return;
    };
    let mut preload = preload;
    let decoded = preload.as_mut().and_then(|preload| preload.message.take()).map(Ok);
    let message = match decoded.or_else(|| incoming.entry.payload().map(decode::<ChannelMessage>)) {
        Some(Ok(message)) => message,
        Some(Err(error)) => return Box::pin(reject(worker, stream, &incoming, &error.to_string())).await,
        None => return Box::pin(reject(worker, stream, &incoming, "entry has no `m` payload field")).await,
    };
    let Some(reply) = ReplyAddress::parse(&message.reply) else {
        return Box::pin(reject(worker, stream, &incoming, "malformed reply address")).await;
    };
    let is_http = matches!(message.event, Event::HttpRequest(_) | Event::HttpDisconnect);
    if is_http != matches!(app, ChannelApp::Http(_)) {
        let error = format!(
            "channel `{channel}` serves {} consumers; got {}",
            app.kind(),
            message.event.type_name()
        );
        return Box::pin(reject(worker, stream, &incoming, &error)).await;
    }
    let span = tracing::info_span!(
        "message",
        channel = %channel,
        conn = %message.reply,
        seq = message.seq,
        event = message.event.type_name()
    );
    let started = Instant::now();
    worker.metrics.in_flight.inc();
    let outcome = async {
        if delivery == Delivery::AfterDeath {
            let deliveries = Box::pin(delivery_count(worker, stream, &incoming.entry.id)).await;
            let limit = worker.config.max_deliveries;
            if deliveries.is_some_and(|n| n > u64::from(limit)) {
                let deliveries = deliveries.unwrap_or_default();
                return Box::pin(give_up(worker, stream, &incoming, app, &message, &reply, deliveries)).await;
            }
        }
        run(
            worker,
            stream,
            &incoming,
            channel,
            app,
            &message,
            &reply,
            redelivered,
            preload,
        )
        .await
    }
    .instrument(span)
    .await;
    worker.metrics.in_flight.dec();
    worker
        .metrics
        .handled(channel, message.event.type_name(), outcome, started.elapsed());
}

/// Runs the consumer and commits, retrying Redis errors; names the outcome.
#[allow(clippy::too_many_arguments)]
async fn run(
    worker: &Worker,
    stream: &str,
    incoming: &Incoming,
    channel: &str,
    app: &ChannelApp,
    message: &ChannelMessage,
    reply: &ReplyAddress,
    redelivered: bool,
    mut preload: Option<Box<Preload>>,
) -> &'static str {
    let mut backoff = Backoff::default();
    // After a failed attempt, part of the commit may have happened.
    let mut again = redelivered;
    loop {
        let result = match app {
            ChannelApp::WebSocket(consumer) => {
                let preload = preload.take();
                attempt(
                    worker,
                    stream,
                    incoming,
                    channel,
                    consumer.as_ref(),
                    message,
                    reply,
                    again,
                    preload,
                )
                .await
            }
            ChannelApp::Http(app) => {
                Box::pin(http_request::attempt(
                    worker,
                    stream,
                    incoming,
                    channel,
                    app.as_ref(),
                    message,
                    reply,
                ))
                .await
            }
        };
        match result {
            Ok(Outcome::Committed) => return "committed",
            Ok(Outcome::Repeated) => {
                // Committed before (an earlier attempt whose answer was lost, a
                // worker that died mid-commit, or a slow one): finished once.
                tracing::info!(entry = %incoming.name(), "message committed before; finished with its stored outcome");
                return "repeated";
            }
            Ok(Outcome::NotOwned) => {
                tracing::info!(
                    entry = %incoming.name(),
                    "message no longer pending to this worker (claimed by another); streamed response stopped"
                );
                return "not_owned";
            }
            Err(error) => {
                worker.metrics.redis_errors.inc();
                tracing::warn!(%error, entry = %incoming.name(), "Redis error while handling; retrying");
                again = true;
                backoff.wait().await;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn attempt(
    worker: &Worker,
    stream: &str,
    incoming: &Incoming,
    channel: &str,
    consumer: &dyn WebSocketConsumer,
    message: &ChannelMessage,
    reply: &ReplyAddress,
    again: bool,
    preload: Option<Box<Preload>>,
) -> redis::RedisResult<Outcome> {
    // The context lives in this block only, so it is not kept (with a second copy in the
    // commit) across the commit's wait: every message's task is as large as its largest
    // wait.
    let (commit, slot) = {
        let (headers, client, subprotocols) = match &message.event {
            Event::Connect(scope) => (scope.headers.clone(), scope.client.clone(), scope.subprotocols.clone()),
            _ => Default::default(),
        };
        let scope = Scope {
            channel: channel.to_owned(),
            reply: reply.clone(),
            path: message.path.clone(),
            query: message.query.clone(),
            headers,
            client,
            subprotocols,
        };
        // Boxed: the largest thing held across the consumer's wait.
        let mut ctx = Box::new(Context::new(
            scope,
            message.seq,
            worker.redis.clone(),
            worker.keys.clone(),
        ));
        let slot = preload.map(|preload| {
            let Preload { fields, slot, .. } = *preload;
            ctx.preload_session(fields);
            slot
        });
        let failure = match absorb::catch(call(consumer, &mut ctx, &message.event)).await {
            Ok(Ok(())) => None,
            Ok(Err(error)) => match error.downcast_ref::<redis::RedisError>() {
                Some(redis_error) if absorb::retryable(redis_error) => return Err(redis_error.clone()),
                _ => Some((Failure::Error, format!("{error:#}"))),
            },
            Err(panic) => Some((Failure::Panic, panic)),
        };
        if let Some((failure, error)) = failure {
            let answer = "closing the connection with 1011";
            absorb::report(
                worker,
                channel,
                &incoming.name(),
                &message.reply,
                failure,
                &error,
                answer,
            );
            // Nothing the failed run collected is kept (its session writes either).
            *ctx = Context::new(
                ctx.scope().clone(),
                message.seq,
                worker.redis.clone(),
                worker.keys.clone(),
            );
            ctx.close(close::INTERNAL_ERROR);
        }
        let actions = actions_of(worker, &mut ctx, message).await?;
        (
            commit_of(stream, incoming, message, reply, &mut ctx, actions, again),
            slot,
        )
    };
    match slot {
        Some(slot) => slot.commit(&worker.committer, Box::new(commit)).await,
        None => worker.committer.commit(commit).await,
    }
}

/// Runs the consumer's method for the event.
async fn call(consumer: &dyn WebSocketConsumer, ctx: &mut Context, event: &Event) -> anyhow::Result<()> {
    match event {
        Event::Connect(_) => consumer.connect(ctx).await,
        Event::Receive(payload) => {
            let message = match (&payload.text, &payload.bytes) {
                (Some(text), _) => Message::Text(text.clone()),
                (None, Some(bytes)) => Message::Binary(bytes.to_vec()),
                (None, None) => Message::Text(String::new()),
            };
            consumer.receive(ctx, message).await
        }
        Event::Disconnect { code } => consumer.disconnect(ctx, *code).await,
        Event::Drain => consumer.drain(ctx).await,
        // `handle` sends HTTP events to the HTTP handler.
        Event::HttpRequest(_) | Event::HttpDisconnect => Ok(()),
    }
}

/// The actions a WebSocket message's context collected, each plain `group.add` placed
/// first (rare, so its wait is boxed: it would size every message's task).
async fn actions_of(worker: &Worker, ctx: &mut Context, message: &ChannelMessage) -> redis::RedisResult<Vec<Action>> {
    let mut actions = std::mem::take(&mut ctx.actions);
    let disconnect = matches!(message.event, Event::Disconnect { .. });
    if !disconnect && actions.iter().any(is_plain_join) {
        Box::pin(place_plain_joins(worker, &mut actions)).await?;
    }
    Ok(actions)
}

/// The commit of a WebSocket message: its `actions` and what else its context collected.
fn commit_of(
    stream: &str,
    incoming: &Incoming,
    message: &ChannelMessage,
    reply: &ReplyAddress,
    ctx: &mut Context,
    actions: Vec<Action>,
    again: bool,
) -> Commit {
    let disconnect = matches!(message.event, Event::Disconnect { .. });
    // A message handled again checks the session's outbox even if this run
    // did not touch the session; a disconnect shortens the outbox's life.
    let session = ctx
        .session_write()
        .or_else(|| (again || disconnect).then(|| SessionWrite::check_only(ctx.session_id().to_owned())));
    Commit {
        stream: stream.to_owned(),
        entry_id: incoming.entry.id.clone(),
        part: incoming.part.clone(),
        interface: reply.interface.clone(),
        conn: reply.conn,
        seq: message.seq,
        reply: (!disconnect).then(|| encode(&Reply::new(reply.conn, Some(message.seq), actions))),
        forget: disconnect,
        body: BodyOp::Keep,
        session,
        group_sends: std::mem::take(&mut ctx.group_sends),
    }
}

/// A `group.add` without a position yet (see [`place_plain_joins`]).
fn is_plain_join(action: &Action) -> bool {
    matches!(action, Action::GroupAdd { since: None, .. })
}

/// Gives each plain `group.add` the group's position now, before the commit:
/// the interface then delivers every broadcast sent after it, including those
/// published before it has subscribed to the group (docs/protocol.md, "Group
/// history and recovery"). One read per group, in the group's slot.
async fn place_plain_joins(worker: &Worker, actions: &mut [Action]) -> redis::RedisResult<()> {
    for action in actions.iter_mut() {
        if let Action::GroupAdd {
            group,
            since: since @ None,
            epoch,
            plain,
        } = action
        {
            let at = groups::position(&mut worker.redis.clone(), &worker.keys, group).await?;
            *since = Some(at.seq);
            *epoch = Some(at.epoch);
            *plain = true;
        }
    }
    Ok(())
}

/// The entry's delivery count, asking until Redis answers; `None` when it is
/// no longer pending (another worker finished it meanwhile).
async fn delivery_count(worker: &Worker, stream: &str, id: &str) -> Option<u64> {
    let mut backoff = Backoff::default();
    loop {
        let mut con = worker.redis.clone();
        match stream::delivery_count(&mut con, stream, WORKER_GROUP, id).await {
            Ok(count) => return count,
            Err(error) => {
                worker.metrics.redis_errors.inc();
                tracing::warn!(%error, entry = id, "cannot read the delivery count; retrying");
                backoff.wait().await;
            }
        }
    }
}

/// Gives up an entry delivered too often: dead-letters it with its count,
/// then commits 1011 (HTTP: 500) for its connection without running the
/// consumer. Two steps in different slots: a worker that dies between them
/// leaves the entry pending, and the next one dead-letters it again.
#[allow(clippy::too_many_arguments)]
async fn give_up(
    worker: &Worker,
    stream: &str,
    incoming: &Incoming,
    app: &ChannelApp,
    message: &ChannelMessage,
    reply: &ReplyAddress,
    deliveries: u64,
) -> &'static str {
    let limit = worker.config.max_deliveries;
    let error = format!(
        "delivered {deliveries} times, more than --max-deliveries {limit}: every handling ended without a commit (the worker died or stalled)"
    );
    worker.metrics.dead_letters.inc();
    tracing::error!(entry = %incoming.name(), stream, deliveries, "poison message: moved to the dead-letter stream; closing its connection");
    let mut backoff = Backoff::default();
    let extra = [("deliveries", deliveries.to_string())];
    loop {
        let mut con = worker.redis.clone();
        let record =
            commit::dead_letter_record(&mut con, &worker.keys, stream, incoming, &worker.member, &error, &extra);
        match record.await {
            Ok(()) => break,
            Err(redis_error) => {
                worker.metrics.redis_errors.inc();
                tracing::warn!(%redis_error, "dead-lettering failed; retrying");
                backoff.wait().await;
            }
        }
    }
    loop {
        let attempt = match app {
            ChannelApp::WebSocket(_) => {
                let scope = Scope {
                    channel: String::new(),
                    reply: reply.clone(),
                    path: message.path.clone(),
                    query: message.query.clone(),
                    headers: Vec::new(),
                    client: String::new(),
                    subprotocols: Vec::new(),
                };
                let mut ctx = Context::new(scope, message.seq, worker.redis.clone(), worker.keys.clone());
                ctx.close(close::INTERNAL_ERROR);
                let actions = std::mem::take(&mut ctx.actions);
                let commit = commit_of(stream, incoming, message, reply, &mut ctx, actions, true);
                worker.committer.commit(commit).await
            }
            ChannelApp::Http(_) => {
                let commit = http_request::internal_error(stream, incoming, message, reply);
                worker.committer.commit(commit).await
            }
        };
        match attempt {
            Ok(_) => return "dead_lettered",
            Err(error) => {
                worker.metrics.redis_errors.inc();
                tracing::warn!(%error, entry = %incoming.name(), "Redis error while giving up a message; retrying");
                backoff.wait().await;
            }
        }
    }
}

/// Dead-letters an entry, retrying until Redis takes it.
async fn reject(worker: &Worker, stream: &str, incoming: &Incoming, error: &str) {
    worker.metrics.dead_letters.inc();
    tracing::error!(stream, entry = %incoming.name(), error, "undecodable entry moved to the dead-letter stream");
    let mut backoff = Backoff::default();
    let mut con = worker.redis.clone();
    while let Err(redis_error) =
        commit::dead_letter(&mut con, &worker.keys, stream, incoming, &worker.member, error).await
    {
        tracing::warn!(%redis_error, "dead-lettering failed; retrying");
        backoff.wait().await;
    }
}
