//! The context a consumer works through while handling one event.
//!
//! Nothing a consumer does reaches the client or Redis right away: accepts,
//! sends, closes, group changes, group sends and session writes are collected
//! here and committed together once the handler returns. A worker that dies
//! mid-message therefore leaves no trace, and the message is simply handled
//! again by another worker.

use switchyard_protocol::groups::GroupFrame;
use switchyard_protocol::redis_conn::Redis;
use switchyard_protocol::{Action, Keys, Payload, ReplyAddress};

use crate::api::session::{self, Session, SessionWrite};

/// What the consumer knows about the connection.
#[derive(Debug, Clone)]
pub struct Scope {
    pub channel: String,
    pub reply: ReplyAddress,
    pub path: String,
    pub query: String,
    /// Only present while handling `connect`.
    pub headers: Vec<(String, String)>,
    pub client: String,
    pub subprotocols: Vec<String>,
}

pub struct Context {
    scope: Scope,
    /// The message's sequence number on its connection.
    seq: u64,
    session_id: String,
    session: Option<Session>,
    pub(crate) actions: Vec<Action>,
    pub(crate) group_sends: Vec<(String, GroupFrame)>,
    redis: Redis,
    keys: Keys,
}

impl Context {
    pub(crate) fn new(scope: Scope, seq: u64, redis: Redis, keys: Keys) -> Context {
        // The reply address, unless the query names a session: then that.
        let reply = scope.reply.to_string();
        let session_id = match session::session_id(&scope.query, &reply) {
            id if id == reply => reply,
            named => named.to_owned(),
        };
        Context {
            scope,
            seq,
            session_id,
            session: None,
            actions: Vec::new(),
            group_sends: Vec::new(),
            redis,
            keys,
        }
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// First value of a query-string parameter.
    pub fn query_param(&self, name: &str) -> Option<String> {
        session::query_value(&self.scope.query, name).map(str::to_owned)
    }

    /// Accepts the connection (answer to `connect`).
    pub fn accept(&mut self) {
        self.actions.push(Action::Accept { subprotocol: None });
    }

    /// Accepts the connection choosing one of the offered subprotocols.
    pub fn accept_subprotocol(&mut self, subprotocol: impl Into<String>) {
        self.actions.push(Action::Accept {
            subprotocol: Some(subprotocol.into()),
        });
    }

    pub fn send_text(&mut self, text: impl Into<String>) {
        self.actions.push(Action::Send(Payload::text(text)));
    }

    pub fn send_bytes(&mut self, bytes: impl Into<Vec<u8>>) {
        self.actions.push(Action::Send(Payload::bytes(bytes)));
    }

    /// Closes the socket with `code` (before accept: refuses the handshake).
    pub fn close(&mut self, code: u16) {
        self.actions.push(Action::Close {
            code,
            reason: String::new(),
        });
    }

    /// Joins a group: the connection gets every broadcast sent after this
    /// message was handled (the worker commits the join with the group's
    /// position at that moment, so one published before the interface has
    /// subscribed is not missed either).
    pub fn group_add(&mut self, group: impl Into<String>) {
        self.actions.push(Action::GroupAdd {
            group: group.into(),
            since: None,
            epoch: None,
            plain: false,
        });
    }

    /// Joins a group "since" broadcast `since` of `epoch` (a client's last
    /// position, e.g. after a reconnect): the interface first delivers the
    /// group's broadcasts after it from the group's history, in order, then the
    /// live ones — no gap, no duplicate. When the history cannot serve it (the
    /// epoch changed, or it was trimmed past `since`) the connection gets a
    /// `{"type": "recover_failed", …}` frame instead and then the live ones
    /// (docs/protocol.md, "Group history and recovery").
    pub fn group_add_since(&mut self, group: impl Into<String>, since: u64, epoch: impl Into<String>) {
        self.actions.push(Action::GroupAdd {
            group: group.into(),
            since: Some(since),
            epoch: Some(epoch.into()),
            plain: false,
        });
    }

    pub fn group_discard(&mut self, group: impl Into<String>) {
        self.actions.push(Action::GroupDiscard { group: group.into() });
    }

    /// Sends a text frame to every member of a group (one publish, on commit).
    pub fn group_send_text(&mut self, group: impl Into<String>, text: impl Into<String>) {
        self.group_sends.push((group.into(), GroupFrame::Text(text.into())));
    }

    /// Sends a binary frame to every member of a group (one publish, on commit).
    pub fn group_send_bytes(&mut self, group: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.group_sends.push((group.into(), GroupFrame::Bytes(bytes.into())));
    }

    /// Sends a JSON object to every member of a group, with the group's
    /// broadcast sequence number added as `"seq"` (one publish, on commit).
    pub fn group_send_json(&mut self, group: impl Into<String>, object: &serde_json::Value) {
        self.group_sends
            .push((group.into(), GroupFrame::JsonWithSeq(object.to_string())));
    }

    /// The worker's Redis connection, for apps that keep their own data there.
    ///
    /// **Writes made through it are at least once**: they happen at once, not
    /// with the commit, and a message whose worker dies before its commit is
    /// handled again by another worker. Make them idempotent, or run them
    /// through an [`OnceScript`](crate::api::once::OnceScript) keyed by
    /// [`message_id`](Context::message_id).
    pub fn redis(&self) -> Redis {
        self.redis.clone()
    }

    /// This message's id, the same on every delivery of it (the reply address
    /// and the sequence number): the key for effects made once per message
    /// ([`OnceScript`](crate::api::once::OnceScript)).
    pub fn message_id(&self) -> String {
        crate::api::once::message_id(&self.scope.reply.to_string(), self.seq)
    }

    /// Key names under the deployment's prefix.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The session id: the client's `session_uuid`, else the reply address.
    pub(crate) fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The connection's session, loaded from Redis on first use.
    pub async fn session(&mut self) -> redis::RedisResult<&mut Session> {
        if self.session.is_none() {
            let fields: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
                .arg(self.keys.session(&self.session_id))
                .query_async(&mut self.redis)
                .await?;
            self.session = Some(Session::loaded(fields));
        }
        Ok(self.session.get_or_insert_with(Session::default))
    }

    /// The session as already read (with the rest of a read batch).
    pub(crate) fn preload_session(&mut self, fields: Vec<(Vec<u8>, Vec<u8>)>) {
        self.session = Some(Session::loaded(fields));
    }

    /// The session's key and changes, when the session was used.
    pub(crate) fn session_write(&self) -> Option<SessionWrite> {
        let session = self.session.as_ref()?;
        let (sets, deletes) = session.changes();
        Some(SessionWrite {
            id: self.session_id.clone(),
            sets: sets.into_iter().map(|(f, v)| (f.to_owned(), v.to_owned())).collect(),
            deletes: deletes.into_iter().map(str::to_owned).collect(),
        })
    }
}
