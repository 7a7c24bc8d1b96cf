//! The frame reader's logic (reassembly, size limit, UTF-8, control frames)
//! against a plain reference model of RFC 6455 written out below.
//!
//! Input: one byte for the size limit, then frames of
//! `[FIN bit | opcode selector] [length] [payload…]`. Frames fastwebsockets
//! refuses itself (see `reader::fuzzing`) are modelled here with the code the
//! reader gives for its error; the rest go through `fuzzing::Reader`. After
//! the first close or failure the reader stops, and so does the model.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_interface::websocket::frames::fuzzing::{Inbound, OpCode, Reader};
use switchyard_protocol::Payload;

const OPCODES: [OpCode; 6] = [
    OpCode::Continuation,
    OpCode::Text,
    OpCode::Binary,
    OpCode::Close,
    OpCode::Ping,
    OpCode::Pong,
];

/// What the reader should hand on for a frame, by the RFC.
#[derive(Debug, PartialEq)]
enum Expect {
    Nothing,
    Message(Payload),
    Ping(Vec<u8>),
    Close(u16, String),
    Fail(u16),
}

#[derive(Default)]
struct Model {
    max: usize,
    /// The fragmented message being assembled: text?, bytes so far.
    partial: Option<(bool, Vec<u8>)>,
}

impl Model {
    fn frame(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) -> Expect {
        let control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
        if control {
            if !fin || payload.len() > 125 {
                return Expect::Fail(1002);
            }
            return match opcode {
                OpCode::Ping => Expect::Ping(payload.to_vec()),
                OpCode::Pong => Expect::Nothing,
                _ => close(payload),
            };
        }
        if payload.len() > self.max {
            return Expect::Fail(1009);
        }
        let text = match (opcode, self.partial.take()) {
            (OpCode::Continuation, None) => return Expect::Fail(1002),
            (OpCode::Continuation, Some((text, bytes))) => {
                self.partial = Some((text, bytes));
                text
            }
            (_, Some(_)) => return Expect::Fail(1002),
            (opcode, None) => {
                self.partial = Some((opcode == OpCode::Text, Vec::new()));
                opcode == OpCode::Text
            }
        };
        let (_, bytes) = self.partial.as_mut().unwrap();
        bytes.extend_from_slice(payload);
        if bytes.len() > self.max {
            return Expect::Fail(1009);
        }
        if text {
            match std::str::from_utf8(bytes) {
                Ok(_) => {}
                // Not UTF-8 whatever follows: fail now, not at the end.
                Err(error) if error.error_len().is_some() || fin => return Expect::Fail(1007),
                Err(_) => {}
            }
        }
        if !fin {
            return Expect::Nothing;
        }
        let (text, bytes) = self.partial.take().unwrap();
        Expect::Message(if text {
            Payload::text(String::from_utf8(bytes).unwrap())
        } else {
            Payload::bytes(bytes)
        })
    }
}

fn close(payload: &[u8]) -> Expect {
    if payload.is_empty() {
        return Expect::Close(1005, String::new());
    }
    if payload.len() == 1 {
        return Expect::Fail(1002);
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    // Codes a peer may send (RFC 6455 §7.4, IANA registry up to 1013).
    if !matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999) {
        return Expect::Fail(1002);
    }
    match std::str::from_utf8(&payload[2..]) {
        Ok(reason) => Expect::Close(code, reason.to_owned()),
        Err(_) => Expect::Fail(1007),
    }
}

fn observed(inbound: Option<Inbound>) -> Expect {
    match inbound {
        None => Expect::Nothing,
        Some(Inbound::Message(payload)) => Expect::Message(payload),
        Some(Inbound::Ping(data)) => Expect::Ping(data),
        Some(Inbound::Close { code, reason }) => Expect::Close(code, reason),
        Some(Inbound::Fail { code, .. }) => Expect::Fail(code),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&limit, mut rest)) = data.split_first() else {
        return;
    };
    // Small limits (the interface allows no less than 125), so that 1009 is reachable.
    let max = 125 + limit as usize;
    let mut model = Model {
        max,
        ..Model::default()
    };
    let mut reader = Reader::new(max);
    while let [head, len, tail @ ..] = rest {
        let fin = head & 0x80 != 0;
        let opcode = OPCODES[(head & 0x0f) as usize % OPCODES.len()];
        let len = (*len as usize).min(tail.len());
        let (payload, next) = tail.split_at(len);
        rest = next;

        let expected = model.frame(fin, opcode, payload);
        // What fastwebsockets refuses never reaches the reader (see reader::fuzzing).
        let refused_by_socket = (matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong) && !fin)
            || (opcode == OpCode::Ping && payload.len() > 125)
            || payload.len() > max
            || (opcode == OpCode::Text && fin && std::str::from_utf8(payload).is_err());
        if refused_by_socket {
            assert!(
                matches!(expected, Expect::Fail(_)),
                "{opcode:?} fin={fin}: {expected:?}"
            );
            return;
        }
        let got = observed(reader.frame(fin, opcode, payload));
        assert_eq!(got, expected, "{opcode:?} fin={fin} payload={payload:02x?}");
        if matches!(got, Expect::Close(..) | Expect::Fail(_)) {
            return;
        }
    }
});
