//! The socket types of an upgraded connection: hyper hands over the upgraded
//! TCP stream, split into the halves that [`super::frames`] reads and
//! [`super::connection`] writes.

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;

pub type Io = TokioIo<Upgraded>;
pub type ReadHalf = tokio::io::ReadHalf<Io>;
pub type WriteHalf = tokio::io::WriteHalf<Io>;
