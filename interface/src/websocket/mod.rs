//! WebSocket connections: the handshake, the frame reader and the connection task.
//!
//! A connection lives in two tasks: [`reader`] turns frames into complete
//! messages (and protocol errors into close codes) and [`connection`] owns the
//! write half, keeps one message in flight, and applies the workers' replies.
//! The bounded queue between them is what slows a flooding client down: when
//! it is full the reader stops reading the socket.

pub mod connection;
pub mod handshake;
pub mod reader;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;

pub type Io = TokioIo<Upgraded>;
pub type ReadHalf = tokio::io::ReadHalf<Io>;
pub type WriteHalf = tokio::io::WriteHalf<Io>;
