//! A handler's end of a read batch: the session read for it, and where its commit goes.
//!
//! A message of a read batch (`read_batch/mod.rs`) is handled by its own task as any other
//! (`dispatch`), with two differences on its first attempt: its session is already read
//! ([`Preload::fields`]), and its commit is handed to the batch (a [`Slot`]) rather than to
//! the batcher. What the batch's `EXEC` does not take comes back and goes to the batcher, so
//! the handler always gets an outcome; a handler that ends without a commit (an error, a
//! retry) tells the batch so when its slot is dropped, so the batch never waits for it.

use redis::{RedisError, RedisResult};
use switchyard_protocol::ChannelMessage;
use tokio::sync::{mpsc, oneshot};

use crate::runtime::commit::{Commit, Committer, Outcome};

/// The batch's answer to one commit: its outcome, or the commit back for the batcher.
pub(super) type Answer = Result<RedisResult<Outcome>, Box<Commit>>;

/// What a handler tells its batch.
pub(super) enum Arrival {
    Offer(Box<Commit>, oneshot::Sender<Answer>),
    /// Ended without a commit.
    Withdrawn,
}

/// A message's share of its read batch, for its first attempt.
pub(crate) struct Preload {
    /// The message, decoded already (taken by the handler).
    pub message: Option<ChannelMessage>,
    /// Its session's fields, read under the batch's watch.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
    pub slot: Slot,
}

/// Where a read batch's message hands its commit.
pub(crate) struct Slot {
    batch: Option<mpsc::UnboundedSender<Arrival>>,
}

impl Slot {
    pub(super) fn new(batch: mpsc::UnboundedSender<Arrival>) -> Slot {
        Slot { batch: Some(batch) }
    }

    /// Commits with the batch, or through `committer` what the batch does not take (or
    /// when it stopped waiting).
    pub async fn commit(mut self, committer: &Committer, commit: Box<Commit>) -> RedisResult<Outcome> {
        let Some(batch) = self.batch.take() else {
            return committer.commit(*commit).await;
        };
        let (done, answer) = oneshot::channel();
        let sent = batch.send(Arrival::Offer(commit, done));
        // Not kept while waiting: should the offer ever be left in the channel, the channel
        // (and the answer's sender in it) must go with the batch, not live on in this wait.
        drop(batch);
        if let Err(mpsc::error::SendError(Arrival::Offer(commit, _))) = sent {
            return committer.commit(*commit).await;
        }
        match answer.await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(commit)) => committer.commit(*commit).await,
            // The batch's task ended without answering (the worker is stopping): nothing of
            // this message is known to be written, and handling it again is always safe.
            Err(_) => Err(RedisError::from((redis::ErrorKind::Client, "read batch stopped"))),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(batch) = self.batch.take() {
            let _ = batch.send(Arrival::Withdrawn);
        }
    }
}
