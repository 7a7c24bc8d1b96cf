//! The HTTP front: everything from the listening socket to the decision what a
//! request is.
//!
//! [`server`] accepts TCP connections (after [`admission`] counts them) and
//! serves HTTP/1.1 on each; [`dispatch`] sends every request to its place by
//! the [`router`]'s tables: the interface's own endpoints ([`probes`]), the
//! WebSocket handshake (`crate::websocket`), the workers ([`proxy`]) or
//! [`static_files`]. [`response`] is the leaf they all build answers with.
//! [`forwarded`] tells the client's address behind a trusted proxy,
//! [`unserved`] refuses work for a channel without a live worker, and
//! [`admin`] serves `/metrics` and `/status` on `--admin-bind`.

pub mod admin;
pub mod admission;
pub mod dispatch;
pub mod forwarded;
pub mod probes;
pub mod proxy;
pub mod response;
pub mod router;
pub mod server;
pub mod static_files;
pub mod unserved;
