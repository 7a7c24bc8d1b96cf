//! The listener: accepts TCP connections and serves HTTP/1.1 on each.
//!
//! Each TCP connection is served inside a `tcp{remote}` span, so its
//! requests' log lines name the client too. When draining starts it stops
//! accepting; idle keep-alive connections are told to close, and upgraded
//! WebSockets are left to their own tasks, which close them with 1001.
//!
//! hyper enforces the request-head limits: a head larger than
//! `--max-header-size` gets 431, and a connection that has not sent a whole
//! head within `--header-read-timeout` (slowloris, or idle keep-alive) is
//! closed without an answer, so a silent socket cannot hold a descriptor.
//! Neither reaches our service, so both are counted from the connection's end.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::shutdown::{Shutdown, TaskGuard};
use crate::state::Shared;

/// Binds the listening socket. With `reuse_port`, several interface processes
/// can listen on the same port and the kernel spreads connections over them
/// (how one machine holds more sockets than one process may open files).
pub fn bind(address: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Accepts connections until draining starts; each is served in a task of its
/// own that holds a [`TaskGuard`] until the connection ends.
pub async fn run(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(shared.config.header_read_timeout)
        .max_header_size(shared.config.max_header_size);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, remote) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        tracing::error!(%error, "accept failed");
                        shared.metrics.error("accept");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(guard) = shared.shutdown.guard() else {
                    break;
                };
                let _ = tcp.set_nodelay(true);
                let drained = shared.shutdown.clone();
                let metrics = shared.metrics.clone();
                let shared = shared.clone();
                let service = service_fn(move |request| crate::front::dispatch::route(shared.clone(), request, remote));
                let connection = http.serve_connection(TokioIo::new(tcp), service).with_upgrades();
                let span = tracing::info_span!("tcp", remote = %remote);
                tokio::spawn(serve_until_drained(connection, drained, metrics, guard).instrument(span));
            }
            _ = shutdown.draining() => break,
        }
    }
    drop(listener);
    tracing::info!("listener closed; draining connections");
}

/// Serves one HTTP connection; when draining starts, an idle keep-alive
/// connection is closed and a busy one finishes its request first.
async fn serve_until_drained<F>(connection: F, mut shutdown: Shutdown, metrics: Arc<Metrics>, _guard: TaskGuard)
where
    F: Future<Output = hyper::Result<()>> + GracefulClose,
{
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.draining() => {
            connection.as_mut().close_gracefully();
            connection.await
        }
    };
    match result {
        Err(error) if error.is_timeout() => {
            metrics.header_timeouts.inc();
            tracing::debug!("request head not received in time; connection closed");
        }
        Err(error) if error.is_parse_too_large() => {
            metrics.headers_too_large.inc();
            tracing::debug!(%error, "request head too large; answered 431");
        }
        Err(error) => tracing::debug!(%error, "HTTP connection ended with an error"),
        Ok(()) => {}
    }
}

/// hyper's graceful shutdown, named for the one connection type we serve.
trait GracefulClose {
    fn close_gracefully(self: Pin<&mut Self>);
}

impl<I, S> GracefulClose for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn close_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}
