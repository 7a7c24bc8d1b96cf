//! HTTP consumers: any `tower::Service` over `http::Request`.
//!
//! The Rust HTTP ecosystem already agreed on an interface for "something that
//! answers requests" — `tower::Service<http::Request<B>>` — so that is the
//! consumer API: an axum `Router` (or any other such service) runs unchanged
//! inside a worker. The request body arrives whole ([`RequestBody`]); the
//! response body may be any `http_body::Body` and is streamed back to the
//! interface in pieces as the service produces it.
//!
//! Request extensions carry [`RequestInfo`] and, for axum's extractor, the
//! client address as `axum::extract::ConnectInfo<SocketAddr>`, and
//! [`WorkerRedis`] — the worker's Redis connection, for apps that keep data
//! there or send to groups (axum: `Extension<WorkerRedis>`).

use std::net::SocketAddr;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use switchyard_protocol::groups::History;
use switchyard_protocol::redis_conn::Redis;
use switchyard_protocol::{Keys, ReplyAddress};
use tower::{Service, ServiceExt};

/// The body an HTTP consumer receives: the whole request body.
pub type RequestBody = http_body_util::Full<Bytes>;

/// Errors from a service or its response body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response with its body boxed.
pub type BoxResponse = Response<UnsyncBoxBody<Bytes, BoxError>>;

/// Where a request came from; in every request's extensions.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// The request's reply address (`<interface>!<request id>`).
    pub reply: ReplyAddress,
    /// The client's address, as the interface saw it.
    pub client: Option<SocketAddr>,
    /// The sequence number of the request's last chunk.
    pub seq: u64,
}

impl RequestInfo {
    /// This request's id, the same on every delivery of it: the key for
    /// effects made once per request ([`OnceScript`](crate::api::once::OnceScript)).
    pub fn message_id(&self) -> String {
        crate::api::once::message_id(&self.reply.to_string(), self.seq)
    }
}

/// The worker's Redis connection and key names; in every request's extensions.
///
/// **Writes made through it are at least once**: a request whose worker dies
/// before the commit is run again by another worker. Make them idempotent,
/// or run them through an [`OnceScript`](crate::api::once::OnceScript) keyed
/// by [`RequestInfo::message_id`].
#[derive(Clone)]
pub struct WorkerRedis {
    pub redis: Redis,
    pub keys: Keys,
    /// `--group-history`: what a group send keeps (`groups::group_send`).
    pub history: History,
}

/// What the runtime holds for an HTTP channel: a service with its types
/// erased. Implemented for every suitable `tower::Service`; register one with
/// [`Apps::http`](crate::Apps::http).
pub trait HttpApp: Send + Sync + 'static {
    fn call(&self, request: Request<RequestBody>) -> BoxFuture<'static, Result<BoxResponse, BoxError>>;
}

/// Adapts a `tower::Service` to [`HttpApp`]; each request gets a clone of
/// the service, as hyper does.
pub(crate) struct ServiceApp<S>(pub S);

impl<S, B> HttpApp for ServiceApp<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn call(&self, request: Request<RequestBody>) -> BoxFuture<'static, Result<BoxResponse, BoxError>> {
        let service = self.0.clone();
        Box::pin(async move {
            let response = service.oneshot(request).await.map_err(Into::into)?;
            Ok(response.map(|body| body.map_err(Into::into).boxed_unsync()))
        })
    }
}
