//! `rooms` on `/ws/rooms/`: chat rooms, the showcase for groups.
//!
//! Clients send JSON commands:
//! - `{"join": "lobby"}` / `{"leave": "lobby"}` — join or leave a room (group
//!   `room:lobby`); answered with `{"joined": "lobby"}` / `{"left": "lobby"}`,
//! - `{"say": "hi", "room": "lobby"}` — one publish to the room; every member
//!   (on any interface) receives `{"room": "lobby", "text": "hi", "seq": n}`,
//!   where `seq` numbers the room's broadcasts so a gap is visible,
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
            ctx.group_add(group(&room));
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

pub fn app() -> Apps {
    Apps::new().websocket("rooms", Rooms)
}
