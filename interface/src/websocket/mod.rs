//! WebSocket connections: the handshake, the frame reader and the connection task.
//!
//! A connection lives in one task, [`connection`]: it owns the write half,
//! keeps one message in flight, and applies the workers' replies; its
//! [`reader::Inbox`] turns frames into complete messages (and protocol errors
//! into close codes). One task rather than a reader task and a queue keeps an
//! idle connection small (see `docs/benchmarks.md`, idle connections). The
//! pending queue is what slows a flooding client down: when it is full the
//! inbox is not polled and the socket is not read.

pub mod connection;
pub mod handshake;
pub mod limits;
pub mod rate;
pub mod reader;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;

pub type Io = TokioIo<Upgraded>;
pub type ReadHalf = tokio::io::ReadHalf<Io>;
pub type WriteHalf = tokio::io::WriteHalf<Io>;
