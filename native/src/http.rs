//! The HTTP side of the console listener: reading a request head,
//! answering with a file of the console's folder or an error, and the
//! origin check that keeps other sites' pages off the WebSocket.

use crate::runtime::net;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest HTTP request head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// A parsed request head.
pub(crate) struct Head {
    pub method: String,
    pub path: String,
    headers: Vec<(String, String)>,
}

impl Head {
    /// The value of header `name` (any case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether header `name` lists `token` (comma-separated, any case).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.header(name)
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }
}

/// Why no request head could be read.
pub(crate) enum HeadError {
    TooLarge,
    Malformed,
    Closed,
}

/// Reads and parses the request head; returns it with any bytes read past it.
pub(crate) async fn read_head(stream: &mut TcpStream) -> Result<(Head, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let head = Head {
                    method: req.method.unwrap_or_default().to_owned(),
                    path: req.path.unwrap_or_default().to_owned(),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                };
                return Ok((head, buf[len..].to_vec()));
            }
            Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err(HeadError::TooLarge),
            Err(_) => return Err(HeadError::Malformed),
        }
    }
}

/// Writes a whole response (the body only if `with_body`: not for HEAD)
/// and closes the connection gently.
pub(crate) async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    with_body: bool,
) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    if with_body {
        let _ = stream.write_all(body).await;
    }
    net::close_gently(stream).await;
}

/// A plain-text error response.
pub(crate) async fn respond_text(stream: &mut TcpStream, status: &str, text: &[u8]) {
    respond(stream, status, "text/plain", text, true).await;
}

/// Answers a GET (or HEAD) for `path` with the file under `www` it names.
pub(crate) async fn serve_file(stream: &mut TcpStream, www: &Path, path: &str, with_body: bool) {
    let Some((file, content_type)) = static_file(www, path) else {
        return respond(
            stream,
            "404 Not Found",
            "text/plain",
            b"not found\n",
            with_body,
        )
        .await;
    };
    match tokio::fs::read(&file).await {
        Ok(body) => respond(stream, "200 OK", content_type, &body, with_body).await,
        Err(_) => {
            let hint: &[u8] = if path.starts_with("/pkg/") {
                b"not found: the wasm console is not built; run `cargo xtask build-wasm`\n"
            } else {
                b"not found\n"
            };
            respond(stream, "404 Not Found", "text/plain", hint, with_body).await
        }
    }
}

/// Maps a URL path to a file under `www` and its content type. Only plain
/// names are served: no `..`, no hidden files, nothing outside `www`.
fn static_file(www: &Path, path: &str) -> Option<(PathBuf, &'static str)> {
    let rel = path.strip_prefix('/')?;
    let rel = if rel.is_empty() { "index.html" } else { rel };
    let plain = rel.split('/').all(|seg| {
        !seg.is_empty()
            && !seg.starts_with('.')
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    });
    if !plain {
        return None;
    }
    let content_type = match rel.rsplit('.').next()? {
        "html" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        _ => return None,
    };
    Some((www.join(rel), content_type))
}

/// Whether a WebSocket handshake may proceed.
///
/// Requests without `Origin` come from programs, not pages, and are allowed.
/// A page's origin must be listed in `allowed`, or be the console's own
/// origin (`http://` + `Host`) with `Host` an IP address or `localhost`:
/// a same-origin check alone would let a DNS-rebinding attacker whose name
/// resolves to 127.0.0.1 pass as "same origin".
pub(crate) fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else { return true };
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let Some(host) = host else { return false };
    let same_origin = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| o.eq_ignore_ascii_case(host));
    same_origin && host_is_literal_or_localhost(host)
}

fn host_is_literal_or_localhost(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_on_a_literal_host_is_allowed() {
        assert!(origin_allowed(
            Some("http://127.0.0.1:7080"),
            Some("127.0.0.1:7080"),
            &[]
        ));
        assert!(origin_allowed(
            Some("http://localhost:7080"),
            Some("localhost:7080"),
            &[]
        ));
        assert!(origin_allowed(
            Some("http://[::1]:7080"),
            Some("[::1]:7080"),
            &[]
        ));
        assert!(origin_allowed(None, Some("127.0.0.1:7080"), &[]));
    }

    #[test]
    fn foreign_and_rebinding_origins_are_refused() {
        assert!(!origin_allowed(
            Some("http://evil.example"),
            Some("127.0.0.1:7080"),
            &[]
        ));
        assert!(!origin_allowed(
            Some("http://127.0.0.1:9999"),
            Some("127.0.0.1:7080"),
            &[]
        ));
        // DNS rebinding: the attacker's name resolves to us, so Host and Origin agree.
        assert!(!origin_allowed(
            Some("http://evil.example:7080"),
            Some("evil.example:7080"),
            &[]
        ));
        assert!(!origin_allowed(Some("null"), Some("127.0.0.1:7080"), &[]));
        let allowed = vec!["http://evil.example:7080".to_owned()];
        assert!(origin_allowed(
            Some("http://evil.example:7080"),
            Some("evil.example:7080"),
            &allowed
        ));
    }

    #[test]
    fn only_plain_files_under_www_are_served() {
        let www = Path::new("/w");
        assert_eq!(
            static_file(www, "/"),
            Some((PathBuf::from("/w/index.html"), "text/html; charset=utf-8"))
        );
        assert_eq!(
            static_file(www, "/pkg/kv_wasm_client_bg.wasm").map(|f| f.1),
            Some("application/wasm")
        );
        for bad in [
            "/../etc/passwd",
            "/pkg/../../x.js",
            "/.git/config",
            "//x.js",
            "/a\\b.js",
            "/x.sh",
            "/%2e%2e/x.js",
        ] {
            assert_eq!(static_file(www, bad), None, "{bad}");
        }
    }
}
