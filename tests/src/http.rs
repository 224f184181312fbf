//! Talking HTTP to the browser console's listener.

use crate::conn::Conn;
use std::net::SocketAddr;

impl Conn {
    /// Reads an HTTP/1.1 response head: the status line and the header
    /// lines up to the blank line.
    ///
    /// # Panics
    ///
    /// If the head does not come within [`IO_TIMEOUT`](crate::IO_TIMEOUT) or is malformed.
    pub fn read_http_head(&mut self) -> HttpResponse {
        let status_line = self.read_line();
        let status = status_line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("{}: not an HTTP status line: {status_line:?}", self.peer()));
        let mut headers = Vec::new();
        loop {
            let line = self.read_line();
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("{}: malformed HTTP header line {line:?}", self.peer()));
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        HttpResponse {
            status_line,
            status,
            headers,
            body: Vec::new(),
        }
    }
}

/// An HTTP response as read by [`http_get`] or [`Conn::read_http_head`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status line, e.g. `HTTP/1.1 200 OK`.
    pub status_line: String,
    /// The status code.
    pub status: u16,
    /// The headers in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (empty for a head read alone).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body, lossily decoded.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `GET PATH` (exactly as given: no normalisation, so `/../x` reaches
/// the server as is) to `addr` over HTTP/1.1 with `Connection: close`, and
/// reads the response; the body is read by `Content-Length`, or to EOF.
///
/// # Panics
///
/// If the server does not answer within [`IO_TIMEOUT`](crate::IO_TIMEOUT).
pub fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut conn = Conn::connect(addr);
    conn.send(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut response = conn.read_http_head();
    response.body = match response.header("Content-Length") {
        Some(len) => {
            let len = len
                .parse()
                .unwrap_or_else(|_| panic!("{addr}: bad Content-Length {len:?}"));
            conn.read_bytes(len)
        }
        None => conn.expect_closed(),
    };
    response
}
