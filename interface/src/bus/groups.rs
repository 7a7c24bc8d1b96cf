//! Group membership and broadcast fan-out at the interface.
//!
//! A group send is one Redis publish whatever the group's size. Each interface
//! keeps its members in memory, subscribes to a group's pub/sub channel while
//! it has at least one local member, and fans every broadcast out to them.
//! After a Redis reconnect it subscribes again to every group it still has (on
//! a Redis Cluster, where groups use sharded pub/sub, `protocol/src/pubsub.rs`
//! also follows failovers and slot moves). Joins and leaves are also recorded
//! in Redis for presence (`membership.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use switchyard_protocol::pubsub::{self, Delivery};
use switchyard_protocol::redis_conn::{Backoff, Redis, RedisClient};
use switchyard_protocol::Keys;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::bus::membership::{self, Change};
use crate::bus::recovery::{Join, Members, Recoverer};
use crate::bus::registry::Registry;

enum Command {
    Subscribe(String),
    Unsubscribe(String),
    /// A connection joins since a position: its history first (`recovery.rs`).
    Join {
        group: String,
        conn: u64,
        join: Join,
    },
}

/// A group's local members.
#[derive(Debug, Default)]
struct GroupMembers {
    /// Get every broadcast.
    live: HashSet<u64>,
    /// Joined since a position, waiting for their history: get nothing yet.
    joining: HashSet<u64>,
}

impl GroupMembers {
    fn is_empty(&self) -> bool {
        self.live.is_empty() && self.joining.is_empty()
    }

    fn len(&self) -> usize {
        self.live.len() + self.joining.len()
    }

    fn contains(&self, conn: u64) -> bool {
        self.live.contains(&conn) || self.joining.contains(&conn)
    }

    fn all(&self) -> impl Iterator<Item = u64> + '_ {
        self.live.iter().chain(self.joining.iter()).copied()
    }
}

/// Local members of every group this interface has.
pub struct Groups {
    members: Mutex<HashMap<String, GroupMembers>>,
    commands: mpsc::UnboundedSender<Command>,
    records: mpsc::UnboundedSender<Change>,
}

impl Groups {
    /// Creates the membership table; its subscriber and recorder tasks run in `tasks`.
    pub fn start(
        client: RedisClient,
        redis: Redis,
        keys: Keys,
        interface: String,
        expiry: Duration,
        registry: Arc<Registry>,
        tasks: &mut JoinSet<()>,
    ) -> Arc<Groups> {
        let (commands, rx) = mpsc::unbounded_channel();
        let (records, changes) = mpsc::unbounded_channel();
        let groups = Arc::new(Groups {
            members: Mutex::new(HashMap::new()),
            commands,
            records,
        });
        let recoverer = Recoverer::new(redis.clone(), keys.clone(), registry);
        tasks.spawn(subscriber(client, keys.clone(), recoverer, Arc::downgrade(&groups), rx));
        let table = Arc::downgrade(&groups);
        let members: membership::Snapshot = Box::new(move || table.upgrade().map(|g| g.snapshot()).unwrap_or_default());
        tasks.spawn(membership::run(redis, keys, interface, expiry, members, changes));
        groups
    }

    /// Makes `conn` a member of `group`. With a [`Join`], it first gets the
    /// group's broadcasts after that position from the history, then the live
    /// ones; a connection already a member just stays one.
    pub fn add(&self, group: &str, conn: u64, since: Option<Join>) {
        let mut members = self.lock();
        let set = members.entry(group.to_owned()).or_default();
        if set.is_empty() {
            let _ = self.commands.send(Command::Subscribe(group.to_owned()));
        }
        let new = !set.contains(conn);
        match since {
            Some(join) if new => {
                set.joining.insert(conn);
                let _ = self.commands.send(Command::Join {
                    group: group.to_owned(),
                    conn,
                    join,
                });
            }
            Some(_) => {}
            None => {
                set.joining.remove(&conn);
                set.live.insert(conn);
            }
        }
        if new {
            let _ = self.records.send(Change::Join(group.to_owned(), conn));
        }
    }

    pub fn discard(&self, group: &str, conn: u64) {
        let mut members = self.lock();
        if let Some(set) = members.get_mut(group) {
            if set.live.remove(&conn) | set.joining.remove(&conn) {
                let _ = self.records.send(Change::Leave(group.to_owned(), conn));
            }
            if set.is_empty() {
                members.remove(group);
                let _ = self.commands.send(Command::Unsubscribe(group.to_owned()));
            }
        }
    }

    /// At shutdown, once the connections are gone: writes the pending membership changes
    /// and removes every membership this interface still has from the member sets, so
    /// that `switchyard status` does not count them until they expire (a day by
    /// default). Returns when that is written (or failed); bound it with a timeout.
    pub async fn shutdown(&self) {
        let (done, written) = tokio::sync::oneshot::channel();
        if self.records.send(Change::Shutdown(done)).is_ok() {
            let _ = written.await;
        }
    }

    /// Rewrites every membership in Redis now (after beats were interrupted for
    /// longer than the liveness TTL: this interface's members may have been swept).
    pub fn refresh(&self) {
        let _ = self.records.send(Change::Refresh);
    }

    /// Every group with its local member ids (joining ones included).
    pub fn snapshot(&self) -> Vec<(String, Vec<u64>)> {
        self.lock()
            .iter()
            .map(|(g, s)| (g.clone(), s.all().collect()))
            .collect()
    }

    /// Local members of a group that get its broadcasts now.
    pub fn members(&self, group: &str) -> Vec<u64> {
        self.lock()
            .get(group)
            .map(|set| set.live.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Group names with their local member counts.
    pub fn sizes(&self) -> Vec<(String, usize)> {
        self.lock().iter().map(|(g, s)| (g.clone(), s.len())).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, GroupMembers>> {
        self.members.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Members for Groups {
    fn members(&self, group: &str) -> Vec<u64> {
        Groups::members(self, group)
    }

    /// Whether the group has local members.
    fn has(&self, group: &str) -> bool {
        self.lock().contains_key(group)
    }

    /// Whether `conn` joined `group` since a position and waits for its history.
    fn is_joining(&self, group: &str, conn: u64) -> bool {
        self.lock().get(group).is_some_and(|set| set.joining.contains(&conn))
    }

    /// Runs `deliver` (the joining connection's history) and makes `conn` a
    /// live member, in one step: no broadcast can reach it in between. Nothing
    /// happens if it left meanwhile.
    fn activate(&self, group: &str, conn: u64, deliver: impl FnOnce()) {
        let mut members = self.lock();
        let Some(set) = members.get_mut(group) else {
            return;
        };
        if set.joining.remove(&conn) {
            deliver();
            set.live.insert(conn);
        }
    }

    fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
}

async fn subscriber(
    client: RedisClient,
    keys: Keys,
    mut recoverer: Recoverer,
    groups: std::sync::Weak<Groups>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut backoff = Backoff::default();
    let mut first = true;
    loop {
        let (mut subscriptions, mut messages) = match pubsub::connect(&client).await {
            Ok(halves) => halves,
            Err(error) => {
                tracing::warn!(%error, "group subscriber cannot reach Redis; retrying");
                backoff.wait().await;
                continue;
            }
        };
        let Some(current) = groups.upgrade().map(|g| g.names()) else {
            return;
        };
        recoverer.retain(&current);
        for group in &current {
            recoverer.subscribing(group).await;
        }
        let mut resubscribed = true;
        for group in &current {
            resubscribed &= subscriptions.subscribe(&keys.group_channel(group)).await.is_ok();
        }
        if !resubscribed {
            backoff.wait().await;
            continue;
        }
        backoff.reset();
        // Subscribed again: what was published meanwhile comes from the history,
        // before anything newer (which waits in the subscription meanwhile).
        if !first {
            let Some(table) = groups.upgrade() else {
                return;
            };
            recoverer.catch_up_all(&*table).await;
        }
        first = false;
        loop {
            tokio::select! {
                delivery = messages.next() => {
                    let Some(table) = groups.upgrade() else {
                        return;
                    };
                    match delivery {
                        Some(Delivery::Message(payload)) => recoverer.broadcast(&*table, &payload).await,
                        Some(Delivery::Interrupted) => {}
                        Some(Delivery::Restored) => recoverer.catch_up_all(&*table).await,
                        None => {
                            tracing::warn!("group subscription connection lost; resubscribing");
                            break;
                        }
                    }
                },
                command = commands.recv() => {
                    let result = match command {
                        Some(Command::Subscribe(group)) => {
                            // Where the group stands is read first, and what was
                            // published before the subscription took effect is read
                            // from the history right after: nothing falls in between.
                            recoverer.subscribing(&group).await;
                            let result = subscriptions.subscribe(&keys.group_channel(&group)).await;
                            if result.is_ok() {
                                let Some(table) = groups.upgrade() else {
                                    return;
                                };
                                recoverer.subscribed(&*table, &group).await;
                            }
                            result
                        }
                        Some(Command::Unsubscribe(group)) => {
                            recoverer.unsubscribed(&group);
                            subscriptions.unsubscribe(&keys.group_channel(&group)).await
                        }
                        Some(Command::Join { group, conn, join }) => {
                            let Some(table) = groups.upgrade() else {
                                return;
                            };
                            recoverer.join(&*table, &group, conn, join).await;
                            Ok(())
                        }
                        None => return,
                    };
                    if let Err(error) = result {
                        tracing::warn!(%error, "group (un)subscribe failed; reconnecting");
                        break;
                    }
                }
            }
        }
        backoff.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_protocol::groups::Position;

    fn since(epoch: &str, seq: u64) -> Option<Join> {
        Some(Join {
            since: Position::new(epoch, seq),
            plain: false,
        })
    }

    fn table() -> (Groups, mpsc::UnboundedReceiver<Command>) {
        let (commands, rx) = mpsc::unbounded_channel();
        let (records, _changes) = mpsc::unbounded_channel();
        let groups = Groups {
            members: Mutex::new(HashMap::new()),
            commands,
            records,
        };
        (groups, rx)
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<Command>) -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(command) = rx.try_recv() {
            seen.push(match command {
                Command::Subscribe(g) => format!("subscribe {g}"),
                Command::Unsubscribe(g) => format!("unsubscribe {g}"),
                Command::Join { group, conn, join } => {
                    format!("join {group} {conn} since {}/{}", join.since.epoch, join.since.seq)
                }
            });
        }
        seen
    }

    #[test]
    fn the_first_member_subscribes_and_the_last_unsubscribes() {
        let (groups, mut rx) = table();
        groups.add("g", 1, None);
        groups.add("g", 2, None);
        assert_eq!(drain(&mut rx), ["subscribe g"]);
        assert_eq!(groups.members("g").len(), 2);
        groups.discard("g", 1);
        groups.discard("g", 2);
        assert_eq!(drain(&mut rx), ["unsubscribe g"]);
        assert!(!groups.has("g"));
    }

    #[test]
    fn a_join_since_waits_for_its_history_before_any_broadcast() {
        let (groups, mut rx) = table();
        groups.add("g", 1, None);
        groups.add("g", 2, since("e", 4));
        assert_eq!(drain(&mut rx), ["subscribe g", "join g 2 since e/4"]);
        assert_eq!(groups.members("g"), [1], "a joining connection gets no live broadcast");
        assert_eq!(groups.sizes(), [("g".to_owned(), 2)], "but it counts as a member");
        assert!(groups.is_joining("g", 2));
        let mut delivered = false;
        groups.activate("g", 2, || delivered = true);
        assert!(delivered);
        let mut live = groups.members("g");
        live.sort();
        assert_eq!(live, [1, 2]);
        assert!(!groups.is_joining("g", 2));
    }

    #[test]
    fn a_connection_that_left_while_joining_is_not_activated() {
        let (groups, mut rx) = table();
        groups.add("g", 7, since("e", 1));
        groups.discard("g", 7);
        assert_eq!(drain(&mut rx), ["subscribe g", "join g 7 since e/1", "unsubscribe g"]);
        let mut delivered = false;
        groups.activate("g", 7, || delivered = true);
        assert!(!delivered, "no history for a connection that left");
        assert!(!groups.has("g"));
    }

    #[test]
    fn a_member_that_joins_again_since_stays_live_without_a_second_history() {
        let (groups, mut rx) = table();
        groups.add("g", 1, None);
        groups.add("g", 1, since("e", 3));
        assert_eq!(drain(&mut rx), ["subscribe g"]);
        assert_eq!(groups.members("g"), [1]);
    }

    #[test]
    fn a_plain_join_while_joining_since_makes_it_live() {
        let (groups, _rx) = table();
        groups.add("g", 1, since("e", 3));
        groups.add("g", 1, None);
        assert_eq!(groups.members("g"), [1]);
        let mut delivered = false;
        groups.activate("g", 1, || delivered = true);
        assert!(!delivered, "already live: the pending history is not delivered on top");
    }
}
