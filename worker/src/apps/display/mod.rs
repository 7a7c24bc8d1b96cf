//! `display`: school display screens that refetch when their schedule changes.
//!
//! The rollout this comes from (a Django Channels app, seed `000_*.txt`)
//! keeps screens current with a WebSocket that only says "fetch again", and
//! falls back to polling whenever the socket is down or switched off — so the
//! socket is an optimisation, never a dependency. Its runbook also stages the
//! sockets school by school, unbinds screens stuck on another device, and
//! watches logs, metrics and alerts; all of that is here too (`docs/display.md`
//! maps the runbook's steps to requests).
//!
//! Files: [`model`] (Redis data, one hash slot per school), [`rollout`] (the
//! kill switch and the staged rollout), [`api`] (snapshot and status, what
//! screens call), [`admin`] (the operators' API), [`errors`] (their error answers), [`socket`] (the
//! invalidation socket), [`census`] (counting screens by mode), [`metrics`],
//! [`seed`] (demo data). The clients are `web/display/` (the screen) and
//! `web/display/admin/` (the admin page).

pub mod admin;
pub mod api;
pub mod census;
pub mod errors;
pub mod metrics;
pub mod model;
pub mod rollout;
pub mod seed;
pub mod socket;

use axum::middleware;

use crate::api::app::Apps;

pub fn app() -> Apps {
    Apps::new().websocket(socket::CHANNEL, socket::DisplaySocket).http(
        api::CHANNEL,
        api::router()
            .merge(admin::router())
            .layer(middleware::from_fn(api::count)),
    )
}
