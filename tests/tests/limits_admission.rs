//! Admission limits of the interface: what is refused before a connection is accepted.
//!
//! Connection ceilings (503 / 429 with Retry-After), the Origin allowlist (403), the
//! request-head timeout (slowloris) and size (431). Upgrades are written by hand over TCP so
//! a test controls the Origin header and the client's source address, and reads the status
//! and headers of a refusal; each limit's metric is read from `/metrics`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use switchyard_tests::stack::channel_stream;
use switchyard_tests::{bounded, eventually, http, Stack};

/// An answered upgrade: status, response head, and the socket (kept open while a test holds
/// the connection).
struct Answer {
    status: u16,
    head: String,
    stream: TcpStream,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then_some(value.trim())
        })
    }

    /// Sends a masked text frame `hi` and expects the echo app's answer: the connection is live.
    async fn echo(&mut self) -> Result<()> {
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | 2];
        frame.extend_from_slice(&mask);
        frame.extend(b"hi".iter().zip(mask).map(|(byte, m)| byte ^ m));
        self.stream.write_all(&frame).await?;
        let mut answer = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), self.stream.read_exact(&mut answer))
            .await
            .map_err(|_| anyhow!("no echo within 10 s"))??;
        if answer != [0x81, 2, b'h', b'i'] {
            bail!("unexpected frame {answer:?}");
        }
        Ok(())
    }
}

/// Sends a WebSocket upgrade for `path` from local address `from` with `extra` headers, and
/// reads the response head.
async fn upgrade(addr: &str, path: &str, from: IpAddr, extra: &[(&str, &str)]) -> Result<Answer> {
    let target: SocketAddr = addr.parse().context("interface address")?;
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(from, 0))
        .with_context(|| format!("bind {from}"))?;
    let mut stream = socket.connect(target).await.context("connect")?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in extra {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let head = tokio::time::timeout(Duration::from_secs(15), read_head(&mut stream))
        .await
        .map_err(|_| anyhow!("no response head within 15 s"))??;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("malformed response head: {head:?}"))?;
    Ok(Answer { status, head, stream })
}

/// Reads up to the blank line ending a response head (byte by byte: nothing after it is
/// consumed).
async fn read_head(stream: &mut TcpStream) -> Result<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            bail!("closed after {:?}", String::from_utf8_lossy(&head));
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn localhost() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// Upgrades until one gets 101 (a slot freed by a closed connection is given back when its
/// task ends, a moment later).
async fn upgrade_eventually(addr: &str, from: IpAddr) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let last = match upgrade(addr, "/ws/echo/", from, &[]).await {
            Ok(answer) if answer.status == 101 => return answer,
            Ok(answer) => answer.head,
            Err(error) => format!("{error:#}"),
        };
        if Instant::now() >= deadline {
            panic!("no 101 from {from} within 15 s; last answer: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A sample's value in the `/metrics` text, 0 when absent.
async fn metric(addr: &str, sample: &str) -> f64 {
    let text = http::get(addr, "/metrics").await.expect("GET /metrics").body;
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Entries in the echo channel's stream: what workers have been asked.
fn echo_stream_len(stack: &Stack) -> usize {
    let mut con = stack.redis_conn().expect("redis connection");
    redis::cmd("XLEN")
        .arg(channel_stream("echo"))
        .query(&mut con)
        .expect("XLEN")
}

/// The echo stream's length once it holds still (the start-up probe's disconnect may still
/// be on its way).
async fn settled_echo_stream_len(stack: &Stack) -> usize {
    let settled = eventually(Duration::from_secs(10), || async {
        let before = echo_stream_len(stack);
        tokio::time::sleep(Duration::from_millis(300)).await;
        (echo_stream_len(stack) == before).then_some(before)
    })
    .await;
    settled.expect("the echo stream keeps growing")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_with_503_until_one_closes() {
    bounded(Duration::from_secs(60), async {
        let stack = Stack::builder("max-connections")
            .interface_arg("--max-connections")
            .interface_arg("2")
            .start()
            .await;
        let addr = stack.addr.as_str();
        assert_eq!(metric(addr, "switchyard_websocket_connections_limit").await, 2.0);

        let first = upgrade_eventually(addr, localhost()).await;
        let mut second = upgrade_eventually(addr, localhost()).await;
        second.echo().await.unwrap();
        let asked = settled_echo_stream_len(&stack).await;
        let refused = upgrade(addr, "/ws/echo/", localhost(), &[]).await.unwrap();
        assert_eq!(refused.status, 503, "{}", refused.head);
        assert_eq!(refused.header("retry-after"), Some("5"), "{}", refused.head);
        assert_eq!(echo_stream_len(&stack), asked, "a refused upgrade reached the workers");
        let refusals = r#"switchyard_websocket_handshakes_refused_total{reason="max_connections"}"#;
        assert!(metric(addr, refusals).await >= 1.0);

        // Closing one lets a new one in.
        drop(first);
        let mut third = upgrade_eventually(addr, localhost()).await;
        third.echo().await.unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limit_refuses_with_429_per_address() {
    bounded(Duration::from_secs(60), async {
        let stack = Stack::builder("per-ip")
            .interface_env("SWITCHYARD_MAX_CONNECTIONS_PER_IP", "1")
            .start()
            .await;
        let addr = stack.addr.as_str();
        let other = IpAddr::from([127, 0, 0, 2]);

        let first = upgrade_eventually(addr, localhost()).await;
        let refused = upgrade(addr, "/ws/echo/", localhost(), &[]).await.unwrap();
        assert_eq!(refused.status, 429, "{}", refused.head);
        assert_eq!(refused.header("retry-after"), Some("5"), "{}", refused.head);
        assert!(
            metric(
                addr,
                r#"switchyard_websocket_handshakes_refused_total{reason="per_ip"}"#
            )
            .await
                >= 1.0
        );

        // Another address has its own allowance.
        let from_other = upgrade(addr, "/ws/echo/", other, &[]).await.unwrap();
        assert_eq!(from_other.status, 101, "{}", from_other.head);

        drop(first);
        let _again = upgrade_eventually(addr, localhost()).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_head_is_closed_after_the_header_timeout() {
    bounded(Duration::from_secs(60), async {
        let stack = Stack::builder("slowloris")
            .workers(0)
            .interface_arg("--header-read-timeout")
            .interface_arg("2")
            .start()
            .await;
        let addr = stack.addr.clone();
        let timeouts_before = metric(&addr, "switchyard_http_header_timeouts_total").await;

        let dribbler = tokio::spawn({
            let addr = addr.clone();
            async move {
                let mut stream = TcpStream::connect(&addr).await?;
                let started = Instant::now();
                stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await?;
                let mut received = Vec::new();
                // One header byte every 200 ms, never the blank line that ends the head.
                for byte in b"X-Slow: ".iter().chain([b'a'; 200].iter()).cycle() {
                    let mut buf = [0u8; 256];
                    match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => return Ok((started.elapsed(), received)),
                        Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
                        Err(_) => {}
                    }
                    if started.elapsed() > Duration::from_secs(20) {
                        bail!("still open after 20 s");
                    }
                    if stream.write_all(&[*byte]).await.is_err() {
                        return Ok((started.elapsed(), received));
                    }
                }
                bail!("unreachable: the dribble cycles forever")
            }
        });

        // Meanwhile a normal request is served.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(http::status(&addr, "/healthz").await, Some(200));

        let (elapsed, received): (Duration, Vec<u8>) = dribbler.await.unwrap().unwrap();
        assert!(
            elapsed >= Duration::from_millis(1500) && elapsed <= Duration::from_secs(8),
            "closed after {elapsed:?}, the timeout is 2 s"
        );
        assert!(
            received.is_empty(),
            "expected a close without an answer, got {:?}",
            String::from_utf8_lossy(&received)
        );
        let counted = eventually(Duration::from_secs(5), || async {
            (metric(&addr, "switchyard_http_header_timeouts_total").await > timeouts_before).then_some(())
        })
        .await;
        assert!(counted.is_some(), "switchyard_http_header_timeouts_total did not move");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_head_gets_431() {
    bounded(Duration::from_secs(60), async {
        let stack = Stack::builder("header-size").workers(0).start().await;
        let addr = stack.addr.as_str();

        // Above hyper's 8 KiB first read, under the 16 KiB default: served.
        let (status, _) = raw_get(addr, 12_000).await.unwrap();
        assert_eq!(status, 200);
        let (status, head) = raw_get(addr, 20_000).await.unwrap();
        assert_eq!(status, 431, "{head}");
        assert!(metric(addr, "switchyard_http_headers_too_large_total").await >= 1.0);
    })
    .await
}

/// `GET /healthz` with one header making the head about `size` bytes; status and response.
async fn raw_get(addr: &str, size: usize) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let filler = "a".repeat(size);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Filler: {filler}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|_| anyhow!("no answer within 10 s"))??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("malformed response: {text:?}"))?;
    Ok((status, text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_allowlist_refuses_other_origins_with_403() {
    bounded(Duration::from_secs(60), async {
        let stack = Stack::builder("origin")
            .interface_arg("--allowed-origin")
            .interface_arg("https://app.example.com,https://*.example.org")
            .start()
            .await;
        let addr = stack.addr.as_str();

        let asked = settled_echo_stream_len(&stack).await;
        for origin in [
            "https://evil.example.com",
            "https://example.org",
            "http://app.example.com",
        ] {
            let refused = upgrade(addr, "/ws/echo/", localhost(), &[("Origin", origin)])
                .await
                .unwrap();
            assert_eq!(refused.status, 403, "{origin}: {}", refused.head);
        }
        assert_eq!(echo_stream_len(&stack), asked, "a refused upgrade reached the workers");
        assert_eq!(
            metric(
                addr,
                r#"switchyard_websocket_handshakes_refused_total{reason="origin"}"#
            )
            .await,
            3.0
        );

        let mut open = Vec::new();
        for origin in [Some("https://app.example.com"), Some("https://a.b.example.org"), None] {
            let extra: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
            let answer = upgrade(addr, "/ws/echo/", localhost(), &extra).await.unwrap();
            assert_eq!(answer.status, 101, "{origin:?}: {}", answer.head);
            open.push(answer);
        }
    })
    .await
}

/// A low open-files soft limit (a distribution default of 1,024) does not cap the interface:
/// it raises its soft limit to the hard one before deriving `--max-connections`.
#[test]
fn the_interface_raises_its_open_files_limit_before_deriving_max_connections() {
    use std::os::unix::process::CommandExt;

    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    if limit.rlim_max == libc::RLIM_INFINITY || limit.rlim_max <= 2048 {
        eprintln!(
            "hard open-files limit {} leaves nothing to raise; skipped",
            limit.rlim_max
        );
        return;
    }
    let hard = limit.rlim_max;
    let mut command = std::process::Command::new(switchyard_tests::binary(switchyard_tests::INTERFACE_BIN));
    command.arg("--check");
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        command.pre_exec(move || {
            let low = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &low) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = command.output().expect("run switchyard-interface --check");
    let text = String::from_utf8_lossy(&output.stdout);
    let expected = format!("effective max connections: {}", hard - 256);
    assert!(text.contains(&expected), "wanted `{expected}` in:\n{text}");
}
