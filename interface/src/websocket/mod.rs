//! WebSocket connections, from the upgrade to the last frame.
//!
//! In the order a connection meets them: [`handshake`] asks a worker whether
//! to accept and answers the upgrade; [`io`] names the upgraded socket's
//! halves; [`frames`] turns the read half's frames into whole messages (and
//! protocol errors into close codes); [`connection`] is the task that owns the
//! write half — it sends each message on and applies the workers' replies and
//! group broadcasts through [`writer`], following [`flow`]: one message in flight, the queue
//! behind it, the endings (the rules alone, unit-tested without sockets). [`limits`] and [`rate`] are the
//! per-connection limits it enforces.
//!
//! One task rather than a reader task and a queue keeps an idle connection
//! small (see `docs/benchmarks.md`, idle connections). The pending queue is
//! what slows a flooding client down: when it is full the inbox is not polled
//! and the socket is not read.

pub mod connection;
pub mod flow;
pub mod frames;
pub mod handshake;
pub mod io;
pub mod limits;
pub mod rate;
pub mod writer;
