//! The HTTP side of the console listener: reading a request head,
//! answering with a file of the console (the copy built into the binary,
//! or a folder given for development) or an error, and the origin check
//! that keeps other sites' pages off the WebSocket.

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
            // More header lines than are read: answered like a head too
            // large (431), as the status is defined for both.
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(_) => return Err(HeadError::Malformed),
        }
    }
}

/// Time a client gets to send its request head.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads a request head within [`HEAD_TIMEOUT`] and returns it if it is a `GET`
/// or `HEAD`; anything else is answered here (431 for a head too large,
/// 400 for a malformed one, 405 for another method) or was never sent.
pub(crate) async fn read_get(stream: &mut TcpStream) -> Option<(Head, Vec<u8>)> {
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(stream)).await;
    let (status, text): (&str, &[u8]) = match head {
        Ok(Ok((head, rest))) if head.method == "GET" || head.method == "HEAD" => {
            return Some((head, rest))
        }
        Ok(Ok(_)) => ("405 Method Not Allowed", b"only GET\n"),
        Ok(Err(HeadError::TooLarge)) => (
            "431 Request Header Fields Too Large",
            b"request head too large\n",
        ),
        Ok(Err(HeadError::Malformed)) => ("400 Bad Request", b"malformed request\n"),
        Ok(Err(HeadError::Closed)) | Err(_) => return None,
    };
    respond_text(stream, status, text).await;
    None
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
    respond_with(stream, status, content_type, body, with_body, "").await;
}

/// [`respond`] with `extra` header lines (each ended by `\r\n`).
async fn respond_with(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    with_body: bool,
    extra: &str,
) {
    // HEAD gets the Content-Length a GET would, as RFC 9110 asks.
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
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

/// One file of the console built into the binary by `native/build.rs`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asset {
    /// Its path under `www/`, with `/` between folders.
    pub path: &'static str,
    /// Its bytes as they were when `kv` was built.
    pub body: &'static [u8],
    /// A quoted strong entity tag: a hash of `body`, so that a browser
    /// revalidating (the page is sent `no-cache`) gets a 304 instead of the
    /// whole wasm again.
    pub etag: &'static str,
}

mod embedded {
    use super::Asset;
    include!(concat!(env!("OUT_DIR"), "/assets.rs"));
}

/// Answers a GET (or HEAD) for `path`: from the folder `www` if one is
/// given (read on every request, so an edited page or a rebuilt wasm shows
/// on reload), else from the copy built into the binary.
pub(crate) async fn serve_file(
    stream: &mut TcpStream,
    www: Option<&Path>,
    head: &Head,
    path: &str,
) {
    let with_body = head.method == "GET";
    match www {
        Some(www) => serve_from_dir(stream, www, path, with_body).await,
        None => {
            serve_embedded(
                stream,
                embedded::ASSETS,
                path,
                head.header("If-None-Match"),
                with_body,
            )
            .await
        }
    }
}

async fn serve_from_dir(stream: &mut TcpStream, www: &Path, path: &str, with_body: bool) {
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

async fn serve_embedded(
    stream: &mut TcpStream,
    assets: &[Asset],
    path: &str,
    if_none_match: Option<&str>,
    with_body: bool,
) {
    let Some((asset, content_type)) = embedded_file(assets, path) else {
        let text = embedded_not_found(assets, path);
        return respond(stream, "404 Not Found", "text/plain", text, with_body).await;
    };
    if if_none_match.is_some_and(|tags| etag_matches(tags, asset.etag)) {
        let head = format!(
            "HTTP/1.1 304 Not Modified\r\nETag: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
            asset.etag
        );
        let _ = stream.write_all(head.as_bytes()).await;
        return net::close_gently(stream).await;
    }
    respond_with(
        stream,
        "200 OK",
        content_type,
        asset.body,
        with_body,
        &format!("ETag: {}\r\n", asset.etag),
    )
    .await;
}

/// The body of a 404 for `path` from the embedded console. The page shows
/// it when its module fails to load, so when the binary was built without
/// the wasm it says how to get one in.
fn embedded_not_found(assets: &[Asset], path: &str) -> &'static [u8] {
    let no_wasm = !assets.iter().any(|a| a.path.starts_with("pkg/"));
    if no_wasm && path.starts_with("/pkg/") {
        b"not found: this kv was built without the wasm console; run `cargo xtask build-wasm`, then rebuild kv\n"
    } else {
        b"not found\n"
    }
}

/// Whether an `If-None-Match` list names `etag` (or is `*`). The
/// comparison is the weak one RFC 9110 prescribes for this header, so a
/// `W/` prefix is ignored.
fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// The embedded file a URL path names, under the same rules as
/// [`static_file`], with its content type.
fn embedded_file<'a>(assets: &'a [Asset], path: &str) -> Option<(&'a Asset, &'static str)> {
    let (rel, content_type) = console_path(path)?;
    let asset = assets.iter().find(|a| a.path == rel)?;
    Some((asset, content_type))
}

/// Maps a URL path to a file under `www` and its content type. Only plain
/// names are served: no `..`, no hidden files, nothing outside `www`.
fn static_file(www: &Path, path: &str) -> Option<(PathBuf, &'static str)> {
    let (rel, content_type) = console_path(path)?;
    Some((www.join(rel), content_type))
}

/// The rules for both sources of the console: a URL path names a file
/// relative to the console's folder (`/` is `index.html`) only if every
/// segment is a plain name (no `..`, nothing hidden, nothing that would
/// need decoding) and its type is one a page needs; returns that relative
/// path and the content type.
fn console_path(path: &str) -> Option<(&str, &'static str)> {
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
    Some((rel, content_type))
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

    /// A table as build.rs writes it, with a `pkg/` whatever the real
    /// build had.
    static FAKE: &[Asset] = &[
        Asset {
            path: "index.html",
            body: b"<!doctype html>",
            etag: "\"1\"",
        },
        Asset {
            path: "pkg/kv_wasm_client.js",
            body: b"export default 1;",
            etag: "\"2\"",
        },
        Asset {
            path: "pkg/kv_wasm_client_bg.wasm",
            body: b"\0asm",
            etag: "\"3\"",
        },
        Asset {
            path: "notes.txt",
            body: b"not a type a page needs",
            etag: "\"4\"",
        },
    ];

    #[test]
    fn embedded_files_follow_the_folder_rules() {
        let served = |path| embedded_file(FAKE, path).map(|(a, t)| (a.path, t));
        assert_eq!(
            served("/"),
            Some(("index.html", "text/html; charset=utf-8"))
        );
        assert_eq!(
            served("/index.html"),
            Some(("index.html", "text/html; charset=utf-8"))
        );
        assert_eq!(
            served("/pkg/kv_wasm_client.js"),
            Some(("pkg/kv_wasm_client.js", "text/javascript; charset=utf-8"))
        );
        assert_eq!(
            served("/pkg/kv_wasm_client_bg.wasm"),
            Some(("pkg/kv_wasm_client_bg.wasm", "application/wasm"))
        );
        for bad in [
            "/notes.txt",
            "/pkg/../index.html",
            "/./index.html",
            "//index.html",
            "/pkg//kv_wasm_client.js",
            "/pkg/kv_wasm_client.js/",
            "/missing.js",
            "index.html",
        ] {
            assert_eq!(served(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_built_in_table_is_the_www_folder() {
        let www = Path::new(env!("CARGO_MANIFEST_DIR")).join("../www");
        let on_disk = |rel: &str| std::fs::read(www.join(rel)).ok();
        let (index, content_type) = embedded_file(embedded::ASSETS, "/").expect("index.html");
        assert_eq!(content_type, "text/html; charset=utf-8");
        assert_eq!(Some(index.body.to_vec()), on_disk("index.html"));
        let (style, content_type) = embedded_file(embedded::ASSETS, "/style.css").expect("style");
        assert_eq!(content_type, "text/css; charset=utf-8");
        assert_eq!(Some(style.body.to_vec()), on_disk("style.css"));
        // The wasm is in the table exactly when it was built (build.rs
        // reruns when www/ changes, so disk and table agree).
        for (rel, want) in [
            ("pkg/kv_wasm_client.js", "text/javascript; charset=utf-8"),
            ("pkg/kv_wasm_client_bg.wasm", "application/wasm"),
        ] {
            let found = embedded_file(embedded::ASSETS, &format!("/{rel}"));
            assert_eq!(found.map(|(a, _)| a.body.to_vec()), on_disk(rel), "{rel}");
            if let Some((_, content_type)) = found {
                assert_eq!(content_type, want, "{rel}");
            }
        }
        for asset in embedded::ASSETS {
            assert!(
                !asset.path.starts_with('/') && !asset.path.contains(".."),
                "{asset:?}"
            );
            assert!(
                asset.etag.len() == 18 && asset.etag.starts_with('"') && asset.etag.ends_with('"'),
                "{asset:?}"
            );
        }
        let mut tags: Vec<_> = embedded::ASSETS.iter().map(|a| a.etag).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(
            tags.len(),
            embedded::ASSETS.len(),
            "distinct files, distinct ETags"
        );
    }

    #[test]
    fn a_binary_without_the_wasm_says_how_to_build_it() {
        let without: Vec<Asset> = FAKE
            .iter()
            .filter(|a| !a.path.starts_with("pkg/"))
            .copied()
            .collect();
        let text = |assets: &[Asset], path| {
            String::from_utf8_lossy(embedded_not_found(assets, path)).into_owned()
        };
        let hint = text(&without, "/pkg/kv_wasm_client.js");
        assert!(
            hint.contains("cargo xtask build-wasm") && hint.contains("rebuild kv"),
            "{hint}"
        );
        // With the wasm built in, a missing file is only missing.
        assert_eq!(text(FAKE, "/pkg/other.js"), "not found\n");
        assert_eq!(text(&without, "/other.js"), "not found\n");
    }

    #[test]
    fn if_none_match_compares_weakly_and_takes_lists() {
        let tag = "\"00ff\"";
        assert!(etag_matches("\"00ff\"", tag));
        assert!(etag_matches("W/\"00ff\"", tag));
        assert!(etag_matches("\"1\", \"00ff\"", tag));
        assert!(etag_matches("*", tag));
        assert!(!etag_matches("\"00fe\"", tag));
        assert!(!etag_matches("00ff", tag));
        assert!(!etag_matches("", tag));
    }
}
