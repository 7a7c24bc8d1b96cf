//! Every broadcast to every local member, in order, exactly once — across lost
//! subscriptions and for connections that join "since" a broadcast.
//!
//! Pub/sub alone loses what is published while a subscription is down (a Redis
//! restart, a failover, a network blip). Each broadcast carries its group's
//! `seq` and `epoch`, and every group send also keeps the broadcast in the
//! group's capped history (`protocol/src/groups.rs`). So this interface keeps,
//! per subscribed group, the [`Position`] of the last broadcast it fanned out,
//! and whenever it may have missed some — after re-subscribing, or when a
//! broadcast arrives with a gap — it reads the history after that position and
//! delivers what it missed before anything newer; copies that arrive twice (from
//! the history, then live) are dropped by their `seq`. A connection that joins
//! since a position gets the history between its position and the group's,
//! then the live broadcasts, with no gap and no duplicate.
//!
//! When the history cannot serve a position (the epoch changed: Redis lost the
//! group's keys; or the history was trimmed past it) the members concerned get a
//! `recover_failed` frame instead ([`recover_failed_frame`]): the app refetches
//! its state; nothing is skipped silently.
//!
//! Everything here runs in the group subscriber task (`groups.rs`), one step at
//! a time, so the deliveries of one group keep their order.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use switchyard_protocol::groups::{read_history, Position, Unrecoverable};
use switchyard_protocol::redis_conn::Redis;
use switchyard_protocol::{decode, GroupMessage, Keys, Payload};

use crate::bus::registry::{ConnEvent, Registry};

/// The membership table as recovery sees it (`groups.rs` implements it).
pub trait Members {
    /// Local members of a group that get its broadcasts now.
    fn members(&self, group: &str) -> Vec<u64>;
    /// Whether the group has local members.
    fn has(&self, group: &str) -> bool;
    /// Every group with local members.
    fn names(&self) -> Vec<String>;
    /// Whether `conn` joined `group` since a position and waits for its history.
    fn is_joining(&self, group: &str, conn: u64) -> bool;
    /// Runs `deliver` (the joining connection's history) and makes `conn` a
    /// live member, in one step; nothing happens if it left meanwhile.
    fn activate(&self, group: &str, conn: u64, deliver: impl FnOnce());
}

/// Where a connection joins a group from (a `group.add` with `since`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// It gets the broadcasts after this position, then the live ones.
    pub since: Position,
    /// A plain join (the worker set `since` to where the group stood): when the
    /// history cannot serve it, the connection joins live without a
    /// `recover_failed` notice, as it asked for no position.
    pub plain: bool,
}

/// History reads under way at once when every group catches up after a reconnect.
const CATCH_UP_READS: usize = 16;

/// How a broadcast relates to the last one fanned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The next one: deliver it.
    Next,
    /// Already delivered (it came from the history first): drop it.
    Duplicate,
    /// Some are missing before it (same epoch): read them from the history first.
    Gap,
    /// Another epoch: the group's numbering started again (Redis lost its keys).
    NewEpoch,
    /// A broadcast without an epoch (a sender that keeps no numbering): deliver it, untracked.
    Untracked,
}

/// Where broadcast `epoch`/`seq` stands relative to `last`.
pub fn classify(last: &Position, epoch: &str, seq: u64) -> Step {
    if epoch.is_empty() {
        return Step::Untracked;
    }
    let from_start = last.epoch.is_empty() && last.seq == 0;
    if last.epoch == epoch || from_start {
        if !from_start && seq <= last.seq {
            Step::Duplicate
        } else if seq == last.seq + 1 {
            Step::Next
        } else {
            Step::Gap
        }
    } else {
        Step::NewEpoch
    }
}

/// Whether a connection at `since` has everything up to `at` already.
fn caught_up(since: &Position, at: &Position) -> bool {
    since.seq == at.seq && (since.epoch == at.epoch || (since.seq == 0 && since.epoch.is_empty()))
}

/// The frame a member gets when broadcasts it may have missed cannot be
/// delivered: `{"type": "recover_failed", "group", "epoch", "seq", "reason"}`,
/// where `epoch`/`seq` is the position the broadcasts that follow continue from.
pub fn recover_failed_frame(group: &str, at: &Position, reason: &str) -> String {
    serde_json::json!({
        "type": "recover_failed",
        "group": group,
        "epoch": at.epoch,
        "seq": at.seq,
        "reason": reason,
    })
    .to_string()
}

/// What a member at some position is owed, read from the group's history.
struct Owed {
    /// A `recover_failed` to send first: the reason, and the position the
    /// broadcasts that follow continue from.
    notice: Option<(&'static str, Position)>,
    /// Then these broadcasts (msgpack, as published), in order.
    broadcasts: Vec<Vec<u8>>,
    /// Where the group's numbering stands.
    now: Position,
}

/// Per subscribed group, the last broadcast fanned out; and how to reach the
/// history and the members.
pub struct Recoverer {
    redis: Redis,
    keys: Keys,
    registry: Arc<Registry>,
    positions: HashMap<String, Position>,
}

impl Recoverer {
    pub fn new(redis: Redis, keys: Keys, registry: Arc<Registry>) -> Recoverer {
        Recoverer {
            redis,
            keys,
            registry,
            positions: HashMap::new(),
        }
    }

    /// The group is about to be subscribed: learn where its numbering stands
    /// (unless known), so that what is missed from here on can be recovered.
    /// Read before the subscription, never after: a broadcast published in
    /// between would otherwise count as delivered.
    pub async fn subscribing(&mut self, group: &str) {
        if self.positions.contains_key(group) {
            return;
        }
        match read_history(&mut self.redis.clone(), &self.keys, group, &Position::default(), false).await {
            Ok(recovery) => {
                self.positions.insert(group.to_owned(), recovery.now);
            }
            Err(error) => {
                tracing::warn!(%group, %error, "cannot read the group's position; its next broadcast sets it")
            }
        }
    }

    /// The group's subscription took effect: what was published since its
    /// position was read (before subscribing) comes from the history.
    pub async fn subscribed(&mut self, groups: &impl Members, group: &str) {
        if self.positions.contains_key(group) {
            self.catch_up(groups, group).await;
        }
    }

    /// The group is no longer subscribed: its broadcasts are of no interest.
    pub fn unsubscribed(&mut self, group: &str) {
        self.positions.remove(group);
    }

    /// Keeps only the positions of `groups` (after a reconnect).
    pub fn retain(&mut self, groups: &[String]) {
        self.positions.retain(|group, _| groups.contains(group));
    }

    /// A broadcast from the subscription: fanned out unless already delivered,
    /// after whatever is missing before it.
    pub async fn broadcast(&mut self, groups: &impl Members, payload: &[u8]) {
        let message = match decode::<GroupMessage>(payload) {
            Ok(message) => Arc::new(message),
            Err(error) => {
                tracing::error!(%error, "undecodable group broadcast; dropped");
                return;
            }
        };
        let group = message.group.clone();
        let Some(last) = self.positions.get(&group).cloned() else {
            // Not followed (yet): its position is set by this broadcast.
            if message.seq > 0 && !message.epoch.is_empty() && groups.has(&group) {
                self.positions
                    .insert(group.clone(), Position::new(message.epoch.clone(), message.seq));
            }
            self.fan_out(groups, &message);
            return;
        };
        match classify(&last, &message.epoch, message.seq) {
            Step::Duplicate => {
                tracing::trace!(%group, seq = message.seq, "broadcast already delivered from the history");
            }
            Step::Next => {
                self.positions
                    .insert(group.clone(), Position::new(message.epoch.clone(), message.seq));
                self.fan_out(groups, &message);
            }
            Step::Untracked => self.fan_out(groups, &message),
            Step::Gap | Step::NewEpoch => {
                tracing::info!(%group, ?last, epoch = %message.epoch, seq = message.seq, "broadcasts missed; reading the group's history");
                let owed = self.owed(&group, last).await;
                if self.caught_up(groups, &group, owed).is_none() {
                    // No history to be had: the members learn that they missed some.
                    let before = Position::new(message.epoch.clone(), message.seq.saturating_sub(1));
                    self.notify(groups, &group, "unavailable", &before);
                }
                // Delivered from the history, unless the read failed.
                if let Some(last) = self.positions.get(&group) {
                    if matches!(
                        classify(last, &message.epoch, message.seq),
                        Step::Next | Step::Gap | Step::NewEpoch
                    ) {
                        self.positions
                            .insert(group.clone(), Position::new(message.epoch.clone(), message.seq));
                        self.fan_out(groups, &message);
                    }
                }
            }
        }
    }

    /// After the subscriptions were restored: every group delivers what was
    /// published while they were down, from its history.
    pub async fn catch_up_all(&mut self, groups: &impl Members) {
        let wanted: Vec<(String, Position)> = self.positions.iter().map(|(g, p)| (g.clone(), p.clone())).collect();
        let this = &*self;
        let reads: Vec<(String, Result<Owed, redis::RedisError>)> = futures::stream::iter(wanted)
            .map(|(group, last)| async move {
                let owed = this.owed(&group, last).await;
                (group, owed)
            })
            .buffered(CATCH_UP_READS)
            .collect()
            .await;
        let mut recovered = 0;
        for (group, owed) in reads {
            recovered += self.caught_up(groups, &group, owed).unwrap_or(0);
        }
        tracing::info!(recovered, "group broadcasts caught up after re-subscribing");
    }

    /// A connection joins `group` since `since`: the history after `since` up
    /// to where the group's members are, then it is a member like the others.
    /// A plain join gets no `recover_failed` notice: it asked for no position.
    pub async fn join(&mut self, groups: &impl Members, group: &str, conn: u64, join: Join) {
        if !groups.is_joining(group, conn) {
            return;
        }
        let Join { since, plain } = join;
        let notify = |this: &Self, reason: &str, from: &Position| {
            if plain {
                tracing::debug!(%group, conn, reason, "plain join whose position the history cannot serve; joined live");
            } else {
                this.send_to(conn, group, reason, from);
            }
        };
        // The group must be at least where the connection is (it may have had
        // broadcasts from another interface that are still on their way here).
        let behind = match self.positions.get(group) {
            None => true,
            Some(at) if since.epoch == at.epoch => since.seq > at.seq,
            // Another numbering than the group's here: one of them is stale.
            Some(_) => !since.epoch.is_empty(),
        };
        if behind {
            self.catch_up(groups, group).await;
        }
        let Some(at) = self.positions.get(group).cloned() else {
            groups.activate(group, conn, || notify(self, "unavailable", &Position::default()));
            return;
        };
        if caught_up(&since, &at) {
            groups.activate(group, conn, || {});
            return;
        }
        let owed = self.owed(group, since.clone()).await;
        groups.activate(group, conn, || {
            let owed = match owed {
                Ok(owed) if owed.now.epoch == at.epoch => owed,
                Ok(_) => {
                    // The numbering changed under this interface's feet: the
                    // members learn it with their next broadcast; this one too.
                    notify(self, "epoch", &at);
                    return;
                }
                Err(error) => {
                    tracing::warn!(%group, conn, %error, "cannot read the group's history for a join");
                    notify(self, "unavailable", &at);
                    return;
                }
            };
            if let Some((reason, from)) = &owed.notice {
                tracing::debug!(%group, conn, ?since, reason, "join since a position the history cannot serve");
                // What follows as a member continues from `at` at most.
                let from = if from.seq > at.seq { &at } else { from };
                notify(self, reason, from);
            }
            // Up to where the members are; what follows reaches it as a member.
            let mut delivered = 0;
            for payload in owed.broadcasts {
                match decode::<GroupMessage>(&payload) {
                    Ok(message) if message.seq <= at.seq => {
                        self.registry.deliver(conn, ConnEvent::Group(Arc::new(message)));
                        delivered += 1;
                    }
                    Ok(_) => break,
                    Err(error) => {
                        tracing::error!(%group, %error, "undecodable broadcast in the history");
                        notify(self, "trimmed", &at);
                        return;
                    }
                }
            }
            tracing::debug!(%group, conn, delivered, "joined since a position");
        });
    }

    /// Reads the history after the group's position and delivers it.
    async fn catch_up(&mut self, groups: &impl Members, group: &str) {
        match self.positions.get(group).cloned() {
            Some(last) => {
                let owed = self.owed(group, last).await;
                let _ = self.caught_up(groups, group, owed);
            }
            // Unknown (its first read failed): from now on, at least.
            None => self.subscribing(group).await,
        }
    }

    /// What a member at `since` is owed. When the group's numbering changed
    /// (Redis lost its keys), what came before is gone — a notice says so — and
    /// the new numbering is read from its start.
    async fn owed(&self, group: &str, since: Position) -> Result<Owed, redis::RedisError> {
        let mut con = self.redis.clone();
        let read = read_history(&mut con, &self.keys, group, &since, true).await?;
        match read.broadcasts {
            Ok(broadcasts) => Ok(Owed {
                notice: None,
                broadcasts,
                now: read.now,
            }),
            Err(Unrecoverable::Epoch) => {
                let fresh = read_history(&mut con, &self.keys, group, &Position::default(), true).await?;
                Ok(match fresh.broadcasts {
                    Ok(broadcasts) => Owed {
                        notice: Some(("epoch", Position::new(fresh.now.epoch.clone(), 0))),
                        broadcasts,
                        now: fresh.now,
                    },
                    Err(_) => Owed {
                        notice: Some(("epoch", fresh.now.clone())),
                        broadcasts: Vec::new(),
                        now: fresh.now,
                    },
                })
            }
            Err(reason) => Ok(Owed {
                notice: Some((reason.as_str(), read.now.clone())),
                broadcasts: Vec::new(),
                now: read.now,
            }),
        }
    }

    /// Applies a history read for the whole group: tells the members what
    /// cannot be recovered, delivers what can. Returns the broadcasts
    /// delivered; `None` when the read failed (the position stays as it was).
    fn caught_up(
        &mut self,
        groups: &impl Members,
        group: &str,
        owed: Result<Owed, redis::RedisError>,
    ) -> Option<usize> {
        let owed = match owed {
            Ok(owed) => owed,
            Err(error) => {
                // The position stays: the next broadcast shows the gap again.
                tracing::warn!(%group, %error, "cannot read the group's history; retried at its next broadcast");
                return None;
            }
        };
        if !groups.has(group) {
            return Some(0);
        }
        if let Some((reason, from)) = &owed.notice {
            tracing::warn!(%group, reason, now = ?owed.now, "missed broadcasts cannot be recovered; members told recover_failed");
            self.notify(groups, group, reason, from);
        }
        let mut delivered = 0;
        for payload in owed.broadcasts {
            match decode::<GroupMessage>(&payload) {
                Ok(message) => {
                    self.fan_out(groups, &Arc::new(message));
                    delivered += 1;
                }
                Err(error) => tracing::error!(%group, %error, "undecodable broadcast in the history; skipped"),
            }
        }
        if delivered > 0 {
            tracing::info!(%group, delivered, "missed broadcasts delivered from the history");
        }
        self.positions.insert(group.to_owned(), owed.now);
        Some(delivered)
    }

    fn fan_out(&self, groups: &impl Members, message: &Arc<GroupMessage>) {
        let members = groups.members(&message.group);
        let delivered = self.registry.deliver_all(&members, message);
        tracing::trace!(group = %message.group, seq = message.seq, delivered, "group broadcast fanned out");
    }

    /// A `recover_failed` frame to every live member.
    fn notify(&self, groups: &impl Members, group: &str, reason: &str, from: &Position) {
        let frame = recover_failed_frame(group, from, reason);
        let message = Arc::new(GroupMessage::new(group.to_owned(), 0, Payload::text(frame)));
        self.registry.deliver_all(&groups.members(group), &message);
    }

    /// A `recover_failed` frame to one connection.
    fn send_to(&self, conn: u64, group: &str, reason: &str, from: &Position) {
        let frame = recover_failed_frame(group, from, reason);
        let message = GroupMessage::new(group.to_owned(), 0, Payload::text(frame));
        self.registry.deliver(conn, ConnEvent::Group(Arc::new(message)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: &str, seq: u64) -> Position {
        Position::new(epoch, seq)
    }

    #[test]
    fn the_next_broadcast_is_delivered_and_a_repeat_dropped() {
        assert_eq!(classify(&at("e1", 4), "e1", 5), Step::Next);
        assert_eq!(classify(&at("e1", 4), "e1", 4), Step::Duplicate);
        assert_eq!(classify(&at("e1", 4), "e1", 2), Step::Duplicate);
    }

    #[test]
    fn a_jump_is_a_gap_and_another_epoch_a_new_numbering() {
        assert_eq!(classify(&at("e1", 4), "e1", 7), Step::Gap);
        assert_eq!(classify(&at("e1", 4), "e2", 1), Step::NewEpoch);
        assert_eq!(classify(&at("e1", 4), "e2", 5), Step::NewEpoch);
    }

    #[test]
    fn from_the_start_any_epoch_begins_at_one() {
        assert_eq!(classify(&Position::default(), "e9", 1), Step::Next);
        assert_eq!(classify(&Position::default(), "e9", 3), Step::Gap);
    }

    #[test]
    fn broadcasts_without_an_epoch_are_not_tracked() {
        assert_eq!(classify(&at("e1", 4), "", 0), Step::Untracked);
        assert_eq!(classify(&at("e1", 4), "", 9), Step::Untracked);
    }

    #[test]
    fn caught_up_needs_the_same_place_of_the_same_numbering() {
        assert!(caught_up(&at("e1", 4), &at("e1", 4)));
        assert!(!caught_up(&at("e1", 3), &at("e1", 4)));
        assert!(!caught_up(&at("e0", 4), &at("e1", 4)));
        assert!(caught_up(&Position::default(), &at("e1", 0)));
        assert!(caught_up(&Position::default(), &Position::default()));
        assert!(!caught_up(&Position::default(), &at("e1", 2)));
    }

    #[test]
    fn the_recover_failed_frame_names_where_broadcasts_continue() {
        let frame: serde_json::Value =
            serde_json::from_str(&recover_failed_frame("room:lobby", &at("171", 42), "trimmed")).unwrap();
        assert_eq!(
            frame,
            serde_json::json!({"type": "recover_failed", "group": "room:lobby", "epoch": "171", "seq": 42, "reason": "trimmed"})
        );
    }
}
