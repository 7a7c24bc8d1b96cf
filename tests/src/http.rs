//! A minimal HTTP/1.1 GET for `/healthz` and `/readyz`.
//!
//! Why this exists: health and readiness are part of the contract (the harness waits for
//! `/healthz` 200 before a test starts; `/readyz` needs Redis, live workers and no drain). A dozen lines over a raw
//! `TcpStream` avoid pulling an HTTP client into the test crate.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP response: status code and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// The value of one sample in Prometheus text (`name{labels} value`); 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `GET path` on `addr` (`127.0.0.1:port`) with `Connection: close`, 5 s time limit.
pub async fn get(addr: &str, path: &str) -> Result<HttpResponse> {
    tokio::time::timeout(Duration::from_secs(5), get_inner(addr, path))
        .await
        .map_err(|_| anyhow!("GET {path} on {addr}: no answer within 5 s"))?
}

async fn get_inner(addr: &str, path: &str) -> Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status_line = text.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        bail!("malformed HTTP response: {text:?}");
    };
    if !version.starts_with("HTTP/") {
        bail!("malformed HTTP response: {text:?}");
    }
    let status: u16 = code.parse().with_context(|| format!("status in {status_line:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok(HttpResponse { status, body })
}

/// Status code of `GET path`, or `None` if the server could not be reached.
pub async fn status(addr: &str, path: &str) -> Option<u16> {
    get(addr, path).await.ok().map(|r| r.status)
}
