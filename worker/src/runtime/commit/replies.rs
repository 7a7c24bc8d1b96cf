//! A batch's replies as stream commands: per interface's reply stream one `XADD` with an
//! `m` field per reply, in order, then its `PEXPIRE`.
//!
//! Why it exists: that is what `commit_reply.lua` does for WebSocket replies, and the
//! worker sends the same commands itself wherever no script is needed (the reply step of
//! plain messages, the WATCH/MULTI commit), so the entry's shape is built in one place.

use redis::Cmd;
use switchyard_protocol::PAYLOAD_FIELD;

/// The number (from 1) of `value` in `list`, added at the end if new.
pub fn number_of<T: PartialEq>(list: &mut Vec<T>, value: T) -> usize {
    match list.iter().position(|known| *known == value) {
        Some(at) => at + 1,
        None => {
            list.push(value);
            list.len()
        }
    }
}

/// The commands for `replies` ((reply stream, reply) pairs, in order), each with its
/// stream: per stream an `XADD` with an `m` per reply, then a `PEXPIRE` of `ttl_ms`.
pub fn commands<'a>(replies: impl IntoIterator<Item = (&'a str, &'a [u8])>, ttl_ms: u64) -> Vec<(&'a str, Cmd)> {
    let mut streams: Vec<&str> = Vec::new();
    let mut xadds: Vec<Cmd> = Vec::new();
    for (stream, reply) in replies {
        let at = number_of(&mut streams, stream) - 1;
        if at == xadds.len() {
            let mut xadd = redis::cmd("XADD");
            xadd.arg(stream).arg("*");
            xadds.push(xadd);
        }
        xadds[at].arg(PAYLOAD_FIELD).arg(reply);
    }
    let mut out = Vec::with_capacity(2 * streams.len());
    for (stream, xadd) in streams.into_iter().zip(xadds) {
        out.push((stream, xadd));
        let mut expire = redis::cmd("PEXPIRE");
        expire.arg(stream).arg(ttl_ms);
        out.push((stream, expire));
    }
    out
}
