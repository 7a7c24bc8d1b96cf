//! `display`: school display screens that refetch when their schedule changes.
//!
//! The rollout this comes from (a Django Channels app) keeps screens current
//! with a WebSocket that only says "fetch again", and falls back to polling
//! whenever the socket is down or switched off — so the socket is an
//! optimisation, never a dependency. Files: [`model`] (Redis data), [`http`]
//! (snapshot, status, admin), [`socket`] (the invalidation socket), [`seed`]
//! (demo data). The client is `web/display/`.

pub mod http;
pub mod model;
pub mod seed;
pub mod socket;

use crate::app::Apps;

pub fn app() -> Apps {
    Apps::new()
        .websocket(socket::CHANNEL, socket::DisplaySocket)
        .http(http::CHANNEL, http::router())
}
