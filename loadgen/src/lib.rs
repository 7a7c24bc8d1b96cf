//! Switchyard's load tool, as a library: the scenarios behind the `switchyard-bench` binary.
//!
//! It exists so Switchyard and its peers (Daphne, uvicorn running Django Channels) can be
//! measured with one client that speaks the chat-counter protocol (and, for `broadcast`, the
//! rooms protocol), refuses non-loopback targets, bounds every run, and reports the same
//! figures (msgs/s, latency percentiles, CPU per message, KiB per connection) as human text or
//! one JSON line.

pub mod broadcast;
pub mod client;
pub mod duplex;
pub mod fleet;
pub mod held;
pub mod hold;
pub mod limits;
pub mod options;
pub mod procstat;
pub mod protocol;
pub mod reference;
pub mod report;
pub mod rtt;
pub mod source;
pub mod storm;
pub mod target;
