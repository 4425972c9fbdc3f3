//! The HTTP surface: the router and the limits every route runs under. The handlers' shared
//! state is in [`state`], the per-route timing layer in [`timing`].

mod api;
mod batch;
mod channels;
mod drills;
mod error;
mod extract;
mod health;
mod lab;
mod origin;
mod page;
mod records_tail;
mod state;
mod timing;
mod ws;

use axum::Router;
use axum::routing::{get, post};

pub use error::ApiError;
pub use extract::{bearer, sticky_cookie};
pub use origin::cross_site;
pub use state::{AppState, MintLimit, RateLimit, Shared, mint_limit, rate_limit};

use self::timing::timed;

/// Every route of the contract. Each handler is timed by its own layer (`Timed`), not by
/// `Router::route_layer`: every router-level layer wraps each route in one more boxed service,
/// and axum clones the whole chain of boxes on every request.
pub fn router(state: AppState) -> Router {
    let m = &state.metrics;
    Router::new()
        .route("/", get(timed(m, page::index)))
        .route("/static/{file}", get(timed(m, page::asset)))
        .route("/api/clients", post(timed(m, api::mint_client)))
        .route("/api/echo/{client_id}", post(timed(m, api::echo)))
        .route("/api/direct/{client_id}", post(timed(m, api::direct)))
        .route("/api/publish", post(timed(m, batch::publish)))
        .route("/api/publish/{client_id}", post(timed(m, api::publish)))
        .route("/api/broadcast", post(timed(m, api::broadcast)))
        .route(
            "/api/channels/{channel}/publish",
            post(timed(m, channels::publish)),
        )
        .route(
            "/api/channels/{channel}/tokens",
            post(timed(m, channels::mint_token)),
        )
        .route(
            "/api/channels/{channel}/presence",
            get(timed(m, channels::presence)),
        )
        .route("/api/replicas", get(timed(m, api::replicas)))
        .route("/api/stats", get(timed(m, lab::stats)))
        .route("/api/notes/{client_id}", get(timed(m, lab::read)))
        .route(
            "/api/notes/{client_id}/local",
            post(timed(m, lab::add_local)),
        )
        .route(
            "/api/notes/{client_id}/shared",
            post(timed(m, lab::add_shared)),
        )
        .route(
            "/api/records/{client_id}",
            get(timed(m, records_tail::tail)),
        )
        .route("/api/sticky/forget", post(timed(m, lab::forget_cookie)))
        .route("/api/drills", get(timed(m, drills::state)))
        .route("/api/drills/{action}", post(timed(m, drills::run)))
        .route("/ws/{client_id}", get(timed(m, ws::upgrade)))
        .route("/healthz", get(timed(m, health::healthz)))
        .route("/readyz", get(timed(m, health::readyz)))
        .route("/metrics", get(timed(m, health::metrics)))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(state)
}
