//! Building responses: the body type every response uses and the few shapes
//! the interface answers with itself (text, JSON), plus request headers as the
//! protocol carries them.
//!
//! A leaf: the router, the proxy, static files and the WebSocket handshake all
//! build responses, and none of them should have to import another to do it.

use std::convert::Infallible;

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use http::{header, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;

/// Every response body: a whole buffer or a stream that may fail midway
/// (which cuts the connection, the only honest way to end a broken response).
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A body held in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// A body streamed from pieces as they come.
pub fn stream_body<S>(pieces: S) -> Body
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    StreamBody::new(pieces.map_ok(Frame::data)).boxed_unsync()
}

/// Request headers as the protocol carries them: names lower-case (as
/// hyper keeps them), values as lossy UTF-8.
pub fn header_pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect()
}

pub fn text_response(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(full(text.to_owned()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// 503 with `Retry-After`: the client should come back in `seconds`.
pub fn try_again_later(text: &str, seconds: u64) -> Response<Body> {
    let mut response = text_response(StatusCode::SERVICE_UNAVAILABLE, text);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
    response
}

pub fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
