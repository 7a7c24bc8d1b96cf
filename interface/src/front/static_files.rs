//! Static files, served by the interface itself.
//!
//! A deployment needs a few files next to its sockets (the `/test/` page, a
//! client script, a favicon) and should not need a second web server for them.
//! `--static /static/=DIR` mounts a directory: GET and HEAD only, an ETag from
//! size and modification time (`If-None-Match` → 304), `Cache-Control`, a
//! content type from the extension. A path that leaves the directory — `..`,
//! an encoded `..`, a symlink pointing out — is refused with 403.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use tokio::io::AsyncReadExt;

use crate::front::response::{full, stream_body, text_response, Body};

/// Files up to this size are read in one go; larger ones are streamed.
const READ_WHOLE: u64 = 1 << 20;
const CHUNK: usize = 64 << 10;

/// One `URL_PREFIX=DIR` mount, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub prefix: String,
    pub dir: PathBuf,
}

impl Mount {
    /// Parses `URL_PREFIX=DIR`; the prefix gets a trailing `/` if it lacks one.
    pub fn parse(text: &str) -> Result<Mount, String> {
        let (prefix, dir) = text
            .split_once('=')
            .ok_or_else(|| format!("static mount `{text}` must look like /static/=./static"))?;
        let prefix = prefix.trim();
        if !prefix.starts_with('/') {
            return Err(format!("static prefix `{prefix}` must start with '/'"));
        }
        let dir = dir.trim();
        if dir.is_empty() {
            return Err(format!("static mount `{text}` names no directory"));
        }
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Mount {
            prefix,
            dir: PathBuf::from(dir),
        })
    }
}

/// Every mount, with its directory resolved once at start-up.
#[derive(Debug)]
pub struct StaticFiles {
    /// (URL prefix, canonical directory), longest prefix first.
    mounts: Vec<(String, PathBuf)>,
    cache_control: HeaderValue,
}

impl StaticFiles {
    pub fn new(mounts: Vec<Mount>, max_age: u64) -> anyhow::Result<StaticFiles> {
        let mut resolved = Vec::new();
        for mount in mounts {
            let root = mount
                .dir
                .canonicalize()
                .map_err(|error| anyhow::anyhow!("--static: {}: {error}", mount.dir.display()))?;
            resolved.push((mount.prefix, root));
        }
        resolved.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        let cache_control = if max_age == 0 {
            HeaderValue::from_static("no-cache")
        } else {
            HeaderValue::from_str(&format!("public, max-age={max_age}")).expect("digits are a valid header value")
        };
        Ok(StaticFiles {
            mounts: resolved,
            cache_control,
        })
    }

    /// The mounts as (URL prefix, directory), for `/status`.
    pub fn mounts(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.mounts
            .iter()
            .map(|(prefix, root)| (prefix.as_str(), root.as_path()))
    }

    /// Whether a request path is under a mount, or is a mount without its
    /// trailing slash (answered with a redirect).
    pub fn claims(&self, path: &str) -> bool {
        self.mounts
            .iter()
            .any(|(prefix, _)| path.starts_with(prefix.as_str()) || prefix.strip_suffix('/') == Some(path))
    }

    /// Answers a GET or HEAD under one of the mounts.
    pub async fn serve(&self, method: &Method, path: &str, headers: &HeaderMap) -> Response<Body> {
        if method != Method::GET && method != Method::HEAD {
            let mut response = text_response(StatusCode::METHOD_NOT_ALLOWED, "static files: GET or HEAD only\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let Some((prefix, root)) = self.mounts.iter().find(|(prefix, _)| path.starts_with(prefix.as_str())) else {
            return redirect(&format!("{path}/"));
        };
        let Some(relative) = safe_relative(&path[prefix.len()..]) else {
            tracing::info!(path, "static path leaves its directory; refused");
            return text_response(StatusCode::FORBIDDEN, "forbidden\n");
        };
        let mut file_path = root.join(&relative);
        if path.ends_with('/') {
            file_path.push("index.html");
        }
        let Ok(file_path) = tokio::fs::canonicalize(&file_path).await else {
            return text_response(StatusCode::NOT_FOUND, "not found\n");
        };
        if !file_path.starts_with(root) {
            tracing::info!(path, "static path resolves outside its directory; refused");
            return text_response(StatusCode::FORBIDDEN, "forbidden\n");
        }
        let Ok(metadata) = tokio::fs::metadata(&file_path).await else {
            return text_response(StatusCode::NOT_FOUND, "not found\n");
        };
        if metadata.is_dir() {
            return redirect(&format!("{path}/"));
        }
        let etag = etag(&metadata);
        let mut response = if if_none_match(headers, &etag) {
            let mut response = Response::new(full(Bytes::new()));
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else {
            let body = if method == Method::HEAD {
                full(Bytes::new())
            } else {
                match file_body(&file_path, metadata.len()).await {
                    Ok(body) => body,
                    Err(error) => {
                        tracing::warn!(%error, file = %file_path.display(), "cannot read static file");
                        return text_response(StatusCode::INTERNAL_SERVER_ERROR, "cannot read file\n");
                    }
                }
            };
            let mut response = Response::new(body);
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, content_type(&file_path));
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(metadata.len()));
            headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            response
        };
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&etag) {
            headers.insert(header::ETAG, value);
        }
        headers.insert(header::CACHE_CONTROL, self.cache_control.clone());
        response
    }
}

/// The percent-decoded path below a mount, or `None` when any segment would
/// climb out (`..`), is not UTF-8, or holds a separator or NUL of its own.
fn safe_relative(raw: &str) -> Option<PathBuf> {
    let mut relative = PathBuf::new();
    for segment in raw.split('/') {
        let segment = percent_decode(segment)?;
        if segment == ".." || segment.contains(['/', '\\', '\0']) {
            return None;
        }
        if !segment.is_empty() && segment != "." {
            relative.push(segment);
        }
    }
    Some(relative)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A strong validator from size and modification time.
fn etag(metadata: &std::fs::Metadata) -> String {
    let modified = metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("\"{:x}-{:x}\"", metadata.len(), modified)
}

/// Whether `If-None-Match` names this ETag (weak comparison, as RFC 9110
/// wants for it) or is `*`.
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

fn content_type(path: &Path) -> HeaderValue {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let textual = mime.type_() == mime_guess::mime::TEXT
        || mime.subtype() == mime_guess::mime::JAVASCRIPT
        || mime.subtype() == mime_guess::mime::JSON;
    let value = if textual && mime.get_param("charset").is_none() {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    };
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

async fn file_body(path: &Path, len: u64) -> std::io::Result<Body> {
    if len <= READ_WHOLE {
        return Ok(full(tokio::fs::read(path).await?));
    }
    let file = tokio::fs::File::open(path).await?;
    let chunks = futures::stream::try_unfold(file, |mut file| async move {
        let mut buffer = vec![0; CHUNK];
        let n = file.read(&mut buffer).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.truncate(n);
        Ok(Some((Bytes::from(buffer), file)))
    });
    Ok(stream_body(chunks))
}

fn redirect(location: &str) -> Response<Body> {
    let mut response = text_response(StatusCode::MOVED_PERMANENTLY, "moved\n");
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_paths_that_climb_out() {
        assert_eq!(safe_relative("a/b.css"), Some(PathBuf::from("a/b.css")));
        assert_eq!(safe_relative("./a//b"), Some(PathBuf::from("a/b")));
        assert_eq!(safe_relative("%61.txt"), Some(PathBuf::from("a.txt")));
        for bad in [
            "../etc/passwd",
            "a/../../x",
            "%2e%2e/x",
            "%2E%2E/x",
            "a%2f..%2f..",
            "a%5c..",
            "a%00",
            "%zz",
            "%ff",
        ] {
            assert_eq!(safe_relative(bad), None, "{bad}");
        }
    }

    #[test]
    fn matches_etags() {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"x\", W/\"abc\""));
        assert!(if_none_match(&headers, "\"abc\""));
        assert!(!if_none_match(&headers, "\"abd\""));
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(if_none_match(&headers, "\"anything\""));
        assert!(!if_none_match(&HeaderMap::new(), "\"abc\""));
    }

    #[test]
    fn parses_mounts() {
        let mount = Mount::parse("/static=./web").unwrap();
        assert_eq!(mount.prefix, "/static/");
        assert_eq!(mount.dir, PathBuf::from("./web"));
        assert!(Mount::parse("static/=x").is_err());
        assert!(Mount::parse("/static/").is_err());
        assert!(Mount::parse("/static/=").is_err());
    }

    #[test]
    fn picks_content_types() {
        assert_eq!(content_type(Path::new("a.html")), "text/html; charset=utf-8");
        assert_eq!(content_type(Path::new("a.png")), "image/png");
        assert_eq!(content_type(Path::new("a.unknownext")), "application/octet-stream");
    }
}
