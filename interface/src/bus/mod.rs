//! The Redis side of the interface: how client events reach the workers and
//! how their answers come back.
//!
//! Out: [`outbound`] appends each message to its channel shard's stream
//! (batched, held while Redis is away). Back: [`replies`] reads this
//! interface's reply stream and hands each reply to the connection it names
//! through the [`registry`] (connection id → mailbox). Broadcasts: [`groups`]
//! subscribes to the groups its connections joined and fans each broadcast
//! out through the same registry; [`membership`] records who is in which
//! group in Redis. [`presence`] tells Redis this interface is alive and
//! learns whether Redis and the workers are. [`backlog`] measures what each
//! channel holds for its workers and says when to refuse more.

pub mod backlog;
pub mod groups;
pub mod membership;
pub mod outbound;
pub mod presence;
pub mod recovery;
pub mod registry;
pub mod replies;
pub mod stalls;
