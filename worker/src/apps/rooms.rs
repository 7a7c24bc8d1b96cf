//! `rooms` on `/ws/rooms/`: chat rooms, the showcase for groups.
//!
//! Clients send JSON commands:
//! - `{"join": "lobby"}` / `{"leave": "lobby"}` — join or leave a room (group
//!   `room:lobby`); answered with `{"joined": "lobby"}` / `{"left": "lobby"}`,
//! - `{"join": "lobby", "since": S, "epoch": E}` — join again after a reconnect:
//!   the room's broadcasts after `seq` S of epoch E come first (from the
//!   room's history), then the live ones — none missed, none twice; when the
//!   history cannot serve S the client gets `{"type": "recover_failed",
//!   "group": "room:lobby", "epoch", "seq", "reason"}` and refetches its state,
//! - `{"say": "hi", "room": "lobby"}` — one publish to the room; every member
//!   (on any interface) receives `{"room": "lobby", "text": "hi", "seq": n,
//!   "epoch": e, "group": "room:lobby"}`: `seq` and `epoch` are the position a
//!   client joins since,
//! - anything else → `{"error": "…"}`.
//!
//! Room names are 1–64 characters of letters, digits, `-`, `_`, `.` or `:`.

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::api::app::Apps;
use crate::api::consumer::{ConsumerResult, Message, WebSocketConsumer};
use crate::api::context::Context;

pub struct Rooms;

fn group(room: &str) -> String {
    format!("room:{room}")
}

fn valid_room(room: &str) -> bool {
    (1..=64).contains(&room.len())
        && room
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

#[async_trait]
impl WebSocketConsumer for Rooms {
    async fn receive(&self, ctx: &mut Context, message: Message) -> ConsumerResult {
        let Message::Text(text) = message else {
            ctx.send_text(json!({"error": "send JSON text"}).to_string());
            return Ok(());
        };
        let command: Value = match serde_json::from_str(&text) {
            Ok(Value::Object(map)) => Value::Object(map),
            _ => {
                ctx.send_text(json!({"error": "expected a JSON object"}).to_string());
                return Ok(());
            }
        };
        let room_of = |key: &str| {
            command
                .get(key)
                .and_then(Value::as_str)
                .filter(|r| valid_room(r))
                .map(str::to_owned)
        };
        if let Some(room) = room_of("join") {
            match since(&command) {
                Ok(None) => ctx.group_add(group(&room)),
                Ok(Some((seq, epoch))) => ctx.group_add_since(group(&room), seq, epoch),
                Err(error) => {
                    ctx.send_text(json!({ "error": error }).to_string());
                    return Ok(());
                }
            }
            ctx.send_text(json!({ "joined": room }).to_string());
        } else if let Some(room) = room_of("leave") {
            ctx.group_discard(group(&room));
            ctx.send_text(json!({ "left": room }).to_string());
        } else if let (Some(room), Some(said)) = (room_of("room"), command.get("say").and_then(Value::as_str)) {
            ctx.group_send_json(group(&room), &json!({ "room": room, "text": said }));
        } else {
            ctx.send_text(
                json!({"error": "expected {\"join\": room}, {\"leave\": room} or {\"say\": text, \"room\": room}"})
                    .to_string(),
            );
        }
        Ok(())
    }
}

/// The position of a join: `"since"` (a whole number ≥ 0) with its `"epoch"`
/// (a string; may be left out with since 0, "from the start").
fn since(command: &Value) -> Result<Option<(u64, String)>, &'static str> {
    let Some(since) = command.get("since") else {
        return Ok(None);
    };
    let Some(seq) = since.as_u64() else {
        return Err("\"since\" must be a whole number >= 0 (the \"seq\" of the last broadcast received)");
    };
    match command.get("epoch") {
        None | Some(Value::Null) if seq == 0 => Ok(Some((0, String::new()))),
        Some(Value::String(epoch)) => Ok(Some((seq, epoch.clone()))),
        _ => Err("\"epoch\" must be the \"epoch\" string of the broadcast \"since\" names"),
    }
}

pub fn app() -> Apps {
    Apps::new().websocket("rooms", Rooms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_since_needs_a_whole_seq_and_its_epoch() {
        assert_eq!(since(&json!({"join": "a"})), Ok(None));
        assert_eq!(
            since(&json!({"join": "a", "since": 4, "epoch": "17"})),
            Ok(Some((4, "17".to_owned())))
        );
        assert_eq!(since(&json!({"join": "a", "since": 0})), Ok(Some((0, String::new()))));
        assert!(since(&json!({"join": "a", "since": 4})).is_err());
        assert!(since(&json!({"join": "a", "since": -1, "epoch": "1"})).is_err());
        assert!(since(&json!({"join": "a", "since": "4", "epoch": "1"})).is_err());
        assert!(since(&json!({"join": "a", "since": 1.5, "epoch": "1"})).is_err());
        assert!(since(&json!({"join": "a", "since": 4, "epoch": 17})).is_err());
    }
}
