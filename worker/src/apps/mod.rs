//! The built-in apps of the `switchyard-worker` binary.
//!
//! They are ordinary users of the consumer API, and double as its examples.

pub mod chat;
pub mod display;
pub mod echo;
pub mod example;
pub mod rooms;

use crate::api::app::Apps;

/// Every built-in app.
pub fn builtin() -> Apps {
    Apps::new()
        .with(echo::app())
        .with(chat::app())
        .with(rooms::app())
        .with(example::app())
        .with(display::app())
}
