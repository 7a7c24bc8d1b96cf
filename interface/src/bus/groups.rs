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
use switchyard_protocol::{decode, GroupMessage, Keys};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::bus::membership::{self, Change};
use crate::bus::registry::Registry;

enum Command {
    Subscribe(String),
    Unsubscribe(String),
}

/// Local members of every group this interface has.
pub struct Groups {
    members: Mutex<HashMap<String, HashSet<u64>>>,
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
        tasks.spawn(subscriber(client, keys.clone(), registry, Arc::downgrade(&groups), rx));
        let table = Arc::downgrade(&groups);
        let members: membership::Snapshot = Box::new(move || table.upgrade().map(|g| g.snapshot()).unwrap_or_default());
        tasks.spawn(membership::run(redis, keys, interface, expiry, members, changes));
        groups
    }

    pub fn add(&self, group: &str, conn: u64) {
        let mut members = self.lock();
        let set = members.entry(group.to_owned()).or_default();
        if set.is_empty() {
            let _ = self.commands.send(Command::Subscribe(group.to_owned()));
        }
        if set.insert(conn) {
            let _ = self.records.send(Change::Join(group.to_owned(), conn));
        }
    }

    pub fn discard(&self, group: &str, conn: u64) {
        let mut members = self.lock();
        if let Some(set) = members.get_mut(group) {
            if set.remove(&conn) {
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

    /// Every group with its local member ids.
    pub fn snapshot(&self) -> Vec<(String, Vec<u64>)> {
        self.lock()
            .iter()
            .map(|(g, s)| (g.clone(), s.iter().copied().collect()))
            .collect()
    }

    /// Local member ids of a group.
    pub fn members(&self, group: &str) -> Vec<u64> {
        self.lock()
            .get(group)
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Group names with their local member counts.
    pub fn sizes(&self) -> Vec<(String, usize)> {
        self.lock().iter().map(|(g, s)| (g.clone(), s.len())).collect()
    }

    fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<u64>>> {
        self.members.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

async fn subscriber(
    client: RedisClient,
    keys: Keys,
    registry: Arc<Registry>,
    groups: std::sync::Weak<Groups>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut backoff = Backoff::default();
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
        let mut resubscribed = true;
        for group in current {
            resubscribed &= subscriptions.subscribe(&keys.group_channel(&group)).await.is_ok();
        }
        if !resubscribed {
            backoff.wait().await;
            continue;
        }
        backoff.reset();
        loop {
            tokio::select! {
                delivery = messages.next() => match delivery {
                    Some(Delivery::Message(payload)) => fan_out(&registry, &groups, &payload),
                    Some(Delivery::Interrupted) => {}
                    None => {
                        tracing::warn!("group subscription connection lost; resubscribing");
                        break;
                    }
                },
                command = commands.recv() => {
                    let result = match command {
                        Some(Command::Subscribe(group)) => subscriptions.subscribe(&keys.group_channel(&group)).await,
                        Some(Command::Unsubscribe(group)) => subscriptions.unsubscribe(&keys.group_channel(&group)).await,
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

fn fan_out(registry: &Registry, groups: &std::sync::Weak<Groups>, payload: &[u8]) {
    let message = match decode::<GroupMessage>(payload) {
        Ok(message) => Arc::new(message),
        Err(error) => {
            tracing::error!(%error, "undecodable group broadcast; dropped");
            return;
        }
    };
    let Some(groups) = groups.upgrade() else {
        return;
    };
    let members = groups.members(&message.group);
    let delivered = registry.deliver_all(&members, &message);
    tracing::trace!(group = %message.group, delivered, "group broadcast fanned out");
}
