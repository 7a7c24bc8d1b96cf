//! Handling `http.request` and `http.disconnect`: body chunks in, response out.
//!
//! A request's chunks may be handled by different workers, so the body
//! received so far lives in Redis (`P:httpbody:{IFACE}:CONN`, a string with a
//! TTL): each chunk with `more_body` is appended to it in the chunk's commit,
//! whose reply is just `done`. The last chunk is handled here: the body is
//! read back, the service called, and its response sent in pieces of up to
//! 64 KiB — all but the last as early replies ([`Committer::stream_reply`]),
//! the last one in the commit with `done`, which also drops the stored body.
//! A worker therefore never holds more than one piece of a response, and
//! collecting the body costs one extra read only for bodies over 64 KiB.
//!
//! The service, and its response body, run under `catch_unwind`
//! ([`absorb`]): a panic (or an error the service returns) is answered 500.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use serde_bytes::ByteBuf;
use switchyard_protocol::{encode, Action, ChannelMessage, Event, HttpRequest, Reply, ReplyAddress};

use crate::api::http_app::{BoxResponse, HttpApp, RequestBody, RequestInfo, WorkerRedis};
use crate::faults;
use crate::runtime::absorb::{self, Failure};
use crate::runtime::commit::{BodyOp, Commit, Outcome, StreamPiece};
use crate::runtime::packed::Incoming;
use crate::runtime::Worker;

/// Largest response piece per reply entry.
const PIECE: usize = 64 << 10;

/// Handles one HTTP event; anything but `http.request` ends the request.
pub(crate) async fn attempt(
    worker: &Worker,
    stream: &str,
    incoming: &Incoming,
    channel: &str,
    app: &dyn HttpApp,
    message: &ChannelMessage,
    reply: &ReplyAddress,
) -> redis::RedisResult<Outcome> {
    let commit = |reply_bytes: Option<Vec<u8>>, forget: bool, body: BodyOp| {
        http_commit(stream, incoming, message, reply, reply_bytes, forget, body)
    };
    let Event::HttpRequest(request) = &message.event else {
        return worker.committer.commit(commit(None, true, BodyOp::Delete)).await;
    };
    if request.more_body {
        let done = encode(&Reply::new(reply.conn, Some(message.seq), Vec::new()));
        let chunk = commit(Some(done), false, BodyOp::Append(request.body.to_vec()));
        return worker.committer.commit(chunk).await;
    }
    let mut con = worker.redis.clone();
    let body = if message.seq > 1 {
        let earlier: Option<Vec<u8>> = redis::cmd("GET")
            .arg(worker.keys.http_body(&reply.interface, reply.conn))
            .query_async(&mut con)
            .await?;
        let mut body = earlier.unwrap_or_default();
        body.extend_from_slice(&request.body);
        Bytes::from(body)
    } else {
        Bytes::from(request.body.to_vec())
    };
    let response = match build_request(worker, message, request, reply, body) {
        Ok(request) => {
            let failure = match absorb::catch(app.call(request)).await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(error)) => Err((Failure::Error, error.to_string())),
                Err(panic) => Err((Failure::Panic, panic)),
            };
            failure.unwrap_or_else(|(failure, error)| {
                absorb::report(
                    worker,
                    channel,
                    &incoming.name(),
                    &message.reply,
                    failure,
                    &error,
                    "answering 500",
                );
                internal_error_response()
            })
        }
        Err(error) => {
            tracing::info!(%error, "request cannot be rebuilt; answering 400");
            plain(StatusCode::BAD_REQUEST, "bad request\n")
        }
    };
    let streamed = stream_response(worker, stream, incoming, channel, reply, response).await?;
    let Some(actions) = streamed else {
        return Ok(Outcome::NotOwned);
    };
    faults::before_http_commit(&request.method, &message.path);
    let last = encode(&Reply::new(reply.conn, Some(message.seq), actions));
    let body_op = if message.seq > 1 { BodyOp::Delete } else { BodyOp::Keep };
    worker.committer.commit(commit(Some(last), true, body_op)).await
}

/// What the commit of an HTTP event carries.
fn http_commit(
    stream: &str,
    incoming: &Incoming,
    message: &ChannelMessage,
    reply: &ReplyAddress,
    reply_bytes: Option<Vec<u8>>,
    forget: bool,
    body: BodyOp,
) -> Commit {
    Commit {
        stream: stream.to_owned(),
        entry_id: incoming.entry.id.clone(),
        part: incoming.part.clone(),
        interface: reply.interface.clone(),
        conn: reply.conn,
        seq: message.seq,
        reply: reply_bytes,
        forget,
        body,
        session: None,
        group_sends: Vec::new(),
    }
}

/// The commit that ends a request with 500 without running the app (a
/// message given up after too many deliveries); an `http.disconnect` just
/// ends it.
pub(crate) fn internal_error(
    stream: &str,
    incoming: &Incoming,
    message: &ChannelMessage,
    reply: &ReplyAddress,
) -> Commit {
    let answer = matches!(message.event, Event::HttpRequest(_)).then(|| {
        let response = internal_error_response();
        let actions = vec![
            start_of(&response),
            body_action(Bytes::from_static(INTERNAL_ERROR), false),
        ];
        encode(&Reply::new(reply.conn, Some(message.seq), actions))
    });
    http_commit(stream, incoming, message, reply, answer, true, BodyOp::Delete)
}

const INTERNAL_ERROR: &[u8] = b"internal server error\n";

fn internal_error_response() -> BoxResponse {
    plain(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
}

/// Sends all but the last piece of a response as early replies; returns the
/// actions left for the final reply, or `None` when the entry is no longer ours.
async fn stream_response(
    worker: &Worker,
    stream: &str,
    incoming: &Incoming,
    channel: &str,
    reply: &ReplyAddress,
    response: BoxResponse,
) -> redis::RedisResult<Option<Vec<Action>>> {
    let mut actions = vec![start_of(&response)];
    let mut body = response.into_body();
    let mut pending = BytesMut::new();
    let mut streamed = false;
    let mut complete = true;
    loop {
        // A body that panics midway fails like one that returns an error.
        let frame = match absorb::catch(body.frame()).await {
            Ok(None) => break,
            Ok(Some(frame)) => frame.map_err(|error| error.to_string()),
            Err(panic) => {
                let conn = reply.to_string();
                absorb::report(
                    worker,
                    channel,
                    &incoming.name(),
                    &conn,
                    Failure::Panic,
                    &panic,
                    "ending the response",
                );
                Err(panic)
            }
        };
        let data = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
            Err(error) => {
                tracing::error!(error = %error, streamed, "response body failed midway");
                if !streamed {
                    let failed = plain(StatusCode::INTERNAL_SERVER_ERROR, "");
                    actions = vec![start_of(&failed)];
                    pending = BytesMut::new();
                } else {
                    // The final reply will lack the end of the body: the
                    // interface cuts the client's connection.
                    complete = false;
                }
                break;
            }
        };
        pending.extend_from_slice(&data);
        while pending.len() > PIECE {
            let piece = pending.split_to(PIECE).freeze();
            actions.push(body_action(piece, true));
            let early = encode(&Reply::new(reply.conn, None, std::mem::take(&mut actions)));
            let piece = StreamPiece {
                stream,
                entry_id: &incoming.entry.id,
                interface: &reply.interface,
                reply: &early,
            };
            if !worker.committer.stream_reply(&piece).await? {
                return Ok(None);
            }
            streamed = true;
        }
    }
    if complete {
        actions.push(body_action(pending.freeze(), false));
    }
    Ok(Some(actions))
}

/// Rebuilds the `http::Request` the service sees.
fn build_request(
    worker: &Worker,
    message: &ChannelMessage,
    request: &HttpRequest,
    reply: &ReplyAddress,
    body: Bytes,
) -> Result<Request<RequestBody>, http::Error> {
    let uri = if message.query.is_empty() {
        message.path.clone()
    } else {
        format!("{}?{}", message.path, message.query)
    };
    let mut builder = Request::builder()
        .method(request.method.as_str())
        .uri(uri)
        .version(Version::HTTP_11);
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let client: Option<SocketAddr> = request.client.parse().ok();
    if let Some(client) = client {
        builder = builder.extension(axum::extract::ConnectInfo(client));
    }
    builder
        .extension(RequestInfo {
            reply: reply.clone(),
            client,
            seq: message.seq,
        })
        .extension(WorkerRedis {
            redis: worker.redis.clone(),
            keys: worker.keys.clone(),
            history: worker.config.history.history(),
        })
        .body(Full::new(body))
}

fn body_action(piece: Bytes, more_body: bool) -> Action {
    Action::HttpResponseBody {
        body: ByteBuf::from(Vec::from(piece)),
        more_body,
    }
}

fn start_of(response: &BoxResponse) -> Action {
    Action::HttpResponseStart {
        status: response.status().as_u16(),
        headers: response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    }
}

/// A short text response made here (400, 500).
fn plain(status: StatusCode, text: &'static str) -> BoxResponse {
    let mut response = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never: std::convert::Infallible| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
