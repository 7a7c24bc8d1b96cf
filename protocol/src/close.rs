//! WebSocket close codes (RFC 6455 §7.4), by name.
//!
//! The interface closes sockets for protocol errors and its limits, the worker
//! for application errors, and both put the code a client gave into
//! `websocket.disconnect`. Naming each code once keeps a 1008 from meaning two
//! things in two files.

/// The purpose of the connection was fulfilled.
pub const NORMAL: u16 = 1000;
/// The server is going away (draining, idle timeout) or the page navigated away.
pub const GOING_AWAY: u16 = 1001;
/// The peer broke the protocol (bad close frame, bad opcode).
pub const PROTOCOL_ERROR: u16 = 1002;
/// Reported when a close frame carried no code; never sent.
pub const NO_STATUS: u16 = 1005;
/// Reported when the connection dropped without a close frame; never sent.
pub const ABNORMAL: u16 = 1006;
/// A text message that is not UTF-8.
pub const INVALID_DATA: u16 = 1007;
/// A limit of this server was broken (send queue, message rate).
pub const POLICY_VIOLATION: u16 = 1008;
/// A message larger than `--max-message-size`.
pub const TOO_BIG: u16 = 1009;
/// The application failed while handling a message.
pub const INTERNAL_ERROR: u16 = 1011;
/// The server cannot take the message now (Redis unreachable); reconnect later.
pub const TRY_AGAIN_LATER: u16 = 1013;
