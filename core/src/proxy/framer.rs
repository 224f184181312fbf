//! Where RESP2 replies end in a byte stream, found without decoding them:
//! the bulk lane passes large replies through to their client (or drops
//! them, for a client that went away) a read at a time, so a `DUMP` of a
//! million keys is never held whole, as bytes or as values.
//!
//! Only the structure is read: header lines, and the lengths of bulk
//! strings and arrays. Nothing is allocated per element, so a declared
//! length costs nothing until its bytes arrive.

use memchr::memchr;

/// Longest header line (`$12345\r\n`, `-ERR …\r\n`) waited for: beyond
/// it without a line end, the stream is not RESP.
const MAX_LINE: usize = 64 * 1024;

/// Deepest nesting of arrays accepted.
const MAX_DEPTH: usize = 64;

/// The stream is not well-formed RESP2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Malformed;

/// The position in one reply, across reads.
#[derive(Debug, Default)]
pub(super) struct Framer {
    /// Elements still to come in each open array, innermost last.
    open: Vec<i64>,
    /// Bytes of a bulk string (its body and line end) still to come.
    bulk_left: usize,
    /// Bytes of the buffer already walked.
    scanned: usize,
}

impl Framer {
    /// Walks `buf` (whose first `scanned()` bytes were walked before) as
    /// far as it goes; whether the reply it started at byte 0 ended, at
    /// [`Framer::scanned`].
    pub fn scan(&mut self, buf: &[u8]) -> Result<bool, Malformed> {
        loop {
            let rest = &buf[self.scanned..];
            if self.bulk_left > 0 {
                let take = self.bulk_left.min(rest.len());
                self.scanned += take;
                self.bulk_left -= take;
                if self.bulk_left > 0 {
                    return Ok(false);
                }
                if self.element_done() {
                    return Ok(true);
                }
                continue;
            }
            let Some(nl) = memchr(b'\n', rest) else {
                return if rest.len() > MAX_LINE {
                    Err(Malformed)
                } else {
                    Ok(false)
                };
            };
            if nl < 1 || rest[nl - 1] != b'\r' {
                return Err(Malformed);
            }
            let (kind, body) = (rest[0], &rest[1..nl - 1]);
            self.scanned += nl + 1;
            let done = match kind {
                b'+' | b'-' | b':' => self.element_done(),
                b'$' => match length(body)? {
                    -1 => self.element_done(),
                    n if n >= 0 => {
                        self.bulk_left = usize::try_from(n).map_err(|_| Malformed)? + 2;
                        false
                    }
                    _ => return Err(Malformed),
                },
                b'*' => match length(body)? {
                    -1 | 0 => self.element_done(),
                    n if n > 0 && self.open.len() < MAX_DEPTH => {
                        self.open.push(n);
                        false
                    }
                    _ => return Err(Malformed),
                },
                _ => return Err(Malformed),
            };
            if done {
                return Ok(true);
            }
        }
    }

    /// Bytes walked of the buffer given to [`Framer::scan`].
    pub fn scanned(&self) -> usize {
        self.scanned
    }

    /// The walked bytes were taken off the front of the buffer.
    pub fn consumed(&mut self) {
        self.scanned = 0;
    }

    /// One element ended; whether that ended the reply.
    fn element_done(&mut self) -> bool {
        loop {
            match self.open.last_mut() {
                None => return true,
                Some(left) => {
                    *left -= 1;
                    if *left > 0 {
                        return false;
                    }
                    self.open.pop();
                }
            }
        }
    }
}

fn length(body: &[u8]) -> Result<i64, Malformed> {
    std::str::from_utf8(body)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in pieces of `step` bytes, taking each reply off the
    /// front as it ends; the replies' lengths.
    fn frames(wire: &[u8], step: usize) -> Result<Vec<usize>, Malformed> {
        let mut f = Framer::default();
        let mut buf: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            while !buf.is_empty() && f.scan(&buf)? {
                out.push(f.scanned());
                buf.drain(..f.scanned());
                f.consumed();
            }
        }
        assert!(buf.is_empty(), "a reply left unfinished");
        Ok(out)
    }

    #[test]
    fn replies_end_where_they_end_however_the_bytes_arrive() {
        let wire = b"+OK\r\n:12\r\n$-1\r\n*-1\r\n*0\r\n$5\r\nhello\r\n-ERR no\r\n\
                     *2\r\n*2\r\n$1\r\na\r\n:1\r\n$0\r\n\r\n";
        let whole = frames(wire, wire.len()).unwrap();
        assert_eq!(whole, [5, 5, 5, 5, 4, 11, 9, 25]);
        for step in 1..wire.len() {
            assert_eq!(frames(wire, step).unwrap(), whole, "in pieces of {step}");
        }
    }

    #[test]
    fn what_is_not_resp2_is_malformed() {
        for bad in [
            &b"?x\r\n"[..],
            b"+no cr\n",
            b"$abc\r\n",
            b"$-2\r\n",
            b"*-5\r\n",
            b"%1\r\n",
        ] {
            assert_eq!(frames(bad, bad.len()), Err(Malformed), "{bad:?}");
        }
        let deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        assert_eq!(frames(&deep, deep.len()), Err(Malformed));
        let mut f = Framer::default();
        assert_eq!(f.scan(&vec![b'+'; MAX_LINE + 1]), Err(Malformed));
    }

    #[test]
    fn a_declared_length_costs_nothing_until_its_bytes_come() {
        let mut f = Framer::default();
        assert_eq!(f.scan(b"$536870912\r\nabc"), Ok(false));
        assert_eq!(f.scanned(), 15);
        assert_eq!(f.bulk_left, 536_870_912 + 2 - 3);
    }
}
