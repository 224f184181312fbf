//! Every error text kv puts on the wire, in one place, as Redis keeps its
//! shared error replies (`shared.wrongtypeerr` …) in one table.
//!
//! Each kind of failure is a typed error whose `Display` is the reply text,
//! code word first (`ERR`, `NOAUTH`, `WRONGPASS`, `NOPROTO`), so a reply is
//! always `Reply::error(e)` and a test can compare against the same value.

use crate::reply::Reply;
use thiserror::Error;

/// Input that cannot be decoded: each is one of Redis's protocol errors,
/// worded as Redis 7.0 words it (`processMultibulkBuffer` and
/// `processInlineBuffer` in its `networking.c`), so that clients and tests
/// written against Redis recognise them. [`DecodeError::is_fatal`] tells
/// whether the connection can carry on after the error reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// A RESP array's `*` line is not a number as Redis reads one, or
    /// announces more than [`Limits::max_args`](crate::Limits::max_args)
    /// elements.
    #[error("ERR Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// An array element does not start with `$`: only bulk strings may
    /// make up a request.
    #[error("ERR Protocol error: expected '$', got '{}'", shown_byte(*got))]
    ExpectedBulk {
        /// The byte found instead.
        got: u8,
    },
    /// A `$` line is not a number, is negative, or announces more than
    /// [`Limits::max_bulk`](crate::Limits::max_bulk) bytes. Refused as soon
    /// as the line is read, before any of the payload is buffered.
    #[error("ERR Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// A `*` line ran past [`Limits::max_line`](crate::Limits::max_line)
    /// bytes without its `\r`.
    #[error("ERR Protocol error: too big mbulk count string")]
    MultibulkCountTooBig,
    /// A `$` line ran past [`Limits::max_line`](crate::Limits::max_line)
    /// bytes without its `\r`.
    #[error("ERR Protocol error: too big bulk count string")]
    BulkCountTooBig,
    /// An inline line ran past [`Limits::max_line`](crate::Limits::max_line)
    /// bytes.
    #[error("ERR Protocol error: too big inline request")]
    InlineTooBig,
    /// An inline line whose quotes do not split into words: a quote left
    /// open, or a closing quote followed by something other than a blank
    /// (see [`Command::from_inline`](crate::Command::from_inline)).
    #[error("ERR Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// An HTTP request arrived on the TCP port: a web page may be trying to
    /// reach the store through the user's browser. Like Redis, the
    /// connection is closed at once.
    #[error("ERR HTTP request refused on the kv port (possible cross-protocol attack); closing")]
    CrossProtocol,
}

/// A byte of the wire as Redis's `%c` shows it in an error line, except
/// that the error text is UTF-8: a byte past ASCII is shown as the Latin-1
/// character of that number where Redis sends the raw byte.
fn shown_byte(b: u8) -> String {
    match b {
        // Redis maps line breaks to spaces so the reply stays one line.
        b'\r' | b'\n' => " ".to_owned(),
        _ => char::from(b).to_string(),
    }
}

/// A request that is well framed but not a valid command. The connection
/// carries on after the error reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    /// The command name is not in the table.
    #[error("ERR unknown command '{name}'")]
    Unknown {
        /// The name as sent, lossily decoded and shortened.
        name: String,
    },
    /// A container command (`CONFIG`, `CLIENT`, `COMMAND`) was given a
    /// subcommand it does not have.
    #[error("ERR unknown subcommand '{sub}'. Try {command} HELP.")]
    UnknownSubcommand {
        /// The subcommand as sent, lossily decoded and shortened.
        sub: String,
        /// The container's name, upper case as Redis writes it here.
        command: String,
    },
    /// Too few or too many arguments for the command's arity.
    #[error("ERR wrong number of arguments for '{command}' command")]
    WrongArity {
        /// The command's full name, lower case as Redis writes it
        /// (`config|get` for a subcommand); for an alias, the alias.
        command: &'static str,
    },
    /// A key over [`Limits::max_key`](crate::Limits::max_key).
    #[error("ERR key too long ({len} bytes, limit {limit})")]
    KeyTooLong {
        /// The key's length.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// An inline command with more words than
    /// [`Limits::max_args`](crate::Limits::max_args) (the same bound RESP
    /// arrays have, so that whatever is accepted here can be forwarded
    /// upstream in RESP).
    #[error("ERR too many arguments ({len}, limit {limit})")]
    TooManyArgs {
        /// The number of words, command name included.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// An inline line with a quote left open, or a closing quote not
    /// followed by a blank (given to [`Command::from_inline`](crate::Command::from_inline)
    /// directly: the decoder refuses such lines itself).
    #[error("ERR Invalid argument(s): unbalanced quotes")]
    UnbalancedQuotes,
    /// A value over [`Limits::max_value`](crate::Limits::max_value).
    #[error("ERR value too long ({len} bytes, limit {limit})")]
    ValueTooLong {
        /// The value's length.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
}

/// A valid command that was refused or failed where it ran.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExecError {
    /// The connection has not authenticated and the command is not one of
    /// those allowed before (`no-auth` in the table).
    #[error("NOAUTH Authentication required.")]
    NoAuth,
    /// `AUTH` with a wrong password, or a user other than `default`.
    #[error("WRONGPASS invalid username-password pair or user is disabled.")]
    WrongPass,
    /// `AUTH` on a node that has no password.
    #[error("ERR AUTH called without any password configured. Are you sure your configuration is correct?")]
    NoPasswordConfigured,
    /// `SELECT` of a database other than 0.
    #[error("ERR DB index is out of range")]
    DbIndexOutOfRange,
    /// `HELLO` with a protocol version other than 2 or 3.
    #[error("NOPROTO unsupported protocol version")]
    NoProto,
    /// An argument that should be an integer is not one, or is out of range.
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    /// An argument or value that should be a float is not one.
    #[error("ERR value is not a valid float")]
    NotFloat,
    /// `INCR` and friends past the 64-bit range.
    #[error("ERR increment or decrement would overflow")]
    Overflow,
    /// `INCRBYFLOAT` to NaN or infinity.
    #[error("ERR increment would produce NaN or Infinity")]
    NanOrInfinity,
    /// Options that do not parse.
    #[error("ERR syntax error")]
    Syntax,
    /// An expire time that is not positive or overflows.
    #[error("ERR invalid expire time in '{0}' command")]
    InvalidExpire(&'static str),
    /// `RENAME` of a missing key.
    #[error("ERR no such key")]
    NoSuchKey,
    /// A string would grow past the largest bulk string.
    #[error("ERR string exceeds maximum allowed size (proto-max-bulk-len)")]
    StringTooLong,
    /// `SETRANGE`, `GETRANGE` offsets out of range.
    #[error("ERR offset is out of range")]
    OffsetOutOfRange,
    /// `SETBIT`/`GETBIT` offsets.
    #[error("ERR bit offset is not an integer or out of range")]
    BitOffset,
    /// `SETBIT` values other than 0 and 1.
    #[error("ERR bit is not an integer or out of range")]
    BitValue,
    /// `EXPIRE … NX` with `XX`, `GT` or `LT`.
    #[error("ERR NX and XX, GT or LT options at the same time are not compatible")]
    ExpireNxWithOthers,
    /// `EXPIRE … GT LT`.
    #[error("ERR GT and LT options at the same time are not compatible")]
    ExpireGtLt,
    /// An option the command does not have.
    #[error("ERR Unsupported option {0}")]
    UnsupportedOption(String),
    /// A `SCAN` cursor that is not a number.
    #[error("ERR invalid cursor")]
    InvalidCursor,
    /// A command refused inside `MULTI`.
    #[error("ERR Command not allowed inside a transaction")]
    NotInMulti,
    /// A transaction that queued more than [`MAX_QUEUED`](crate::server::MAX_QUEUED) bytes.
    #[error("ERR transaction too large (over {0} bytes queued); discarded")]
    TransactionTooLarge(usize),
    /// `MULTI` inside `MULTI`.
    #[error("ERR MULTI calls can not be nested")]
    NestedMulti,
    /// `EXEC` without `MULTI`.
    #[error("ERR EXEC without MULTI")]
    ExecWithoutMulti,
    /// `DISCARD` without `MULTI`.
    #[error("ERR DISCARD without MULTI")]
    DiscardWithoutMulti,
    /// `WATCH` inside `MULTI`.
    #[error("ERR WATCH inside MULTI is not allowed")]
    WatchInMulti,
    /// `EXEC` after a queuing error.
    #[error("EXECABORT Transaction discarded because of previous errors.")]
    ExecAbort,
    /// `EXEC` refused before it ran (the text is the reason, without its
    /// leading `-`): the transaction is discarded, as Redis's
    /// `execCommandAbort` does.
    #[error("EXECABORT Transaction discarded because of: {0}")]
    ExecAbortBecause(String),
    /// A command that may grow memory while memory is over `maxmemory`
    /// and nothing may be evicted.
    #[error("OOM command not allowed when used memory > 'maxmemory'.")]
    OutOfMemory,
    /// A command that needs state on a connection of its own upstream,
    /// which the proxy does not give (yet).
    #[error("ERR '{0}' is not available through the kv proxy: it needs a dedicated connection to the server (connect to the server directly)")]
    NeedsDedicatedConnection(String),
    /// Every dedicated upstream connection the proxy allows is taken.
    #[error("ERR the kv proxy's {0} dedicated upstream connections (for subscriptions and transactions) are all in use: try again later, or connect to the server directly")]
    DedicatedLimit(usize),
    /// `CLIENT SETNAME` with spaces or control characters.
    #[error("ERR Client names cannot contain spaces, newlines or special characters.")]
    BadClientName,
    /// `CLIENT SETINFO` of an attribute other than `LIB-NAME` or `LIB-VER`.
    #[error("ERR Unrecognized option '{0}'")]
    UnrecognizedOption(String),
    /// `CLIENT SETINFO` with spaces or control characters in the value.
    #[error("ERR {0} cannot contain spaces, newlines or special characters.")]
    BadClientInfo(String),
    /// A write whose log record would exceed the record format's limit.
    #[error("ERR value too large for the log")]
    TooLargeForLog,
    /// The log failed: writes are refused (and unstored ones rolled back)
    /// until it is rewritten.
    #[error("ERR persistence failed: {0}")]
    PersistenceFailed(String),
}

/// Why the proxy answered a request with an error instead of the
/// upstream's reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UpstreamError {
    /// The upstream connection broke with the request in flight.
    #[error("ERR upstream connection lost")]
    Lost,
    /// No reply within the request timeout; the connection was reset.
    #[error("ERR upstream timed out")]
    TimedOut,
    /// The last connection attempt failed; requests fail at once.
    #[error("ERR upstream unavailable: cannot reach the server")]
    Unavailable,
    /// [`ProxyConfig::max_upstream_in_flight`](crate::ProxyConfig) requests
    /// are in flight already.
    #[error("ERR proxy overloaded: too many requests in flight upstream")]
    Overloaded,
    /// The upstream refused the proxy's `--upstream-password`; with the
    /// server's own words, so the operator sees which side is wrong.
    #[error("ERR upstream refused the proxy's password ({0})")]
    RefusedPassword(String),
    /// The upstream refused the proxy's `--upstream-user` with its
    /// password (Redis does not say which of the two is wrong).
    #[error("ERR upstream refused the proxy's user '{user}' with its password ({why})")]
    RefusedUser {
        /// The user the proxy gave.
        user: String,
        /// The server's words.
        why: String,
    },
    /// The upstream is at its `--max-clients` cap and turned the proxy away.
    #[error("ERR upstream is at its client limit ({0})")]
    AtClientLimit(String),
    /// The upstream answered the proxy's handshake with another error.
    #[error("ERR upstream refused the proxy ({0})")]
    Refused(String),
    /// The upstream sent bytes that are not a RESP reply.
    #[error("ERR upstream sent a malformed reply")]
    Malformed,
    /// The upstream sent a reply with no request waiting for it.
    #[error("ERR upstream sent a reply nobody asked for")]
    Unasked,
    /// A command of kv's own sent through the proxy to a server that is
    /// not kv (see [`KvOnly`](crate::command::table::KvOnly)).
    #[error(
        "ERR the upstream server ({server}) has no {what}; it is a kv server command. {instead}"
    )]
    NotKv {
        /// The server, as its `HELLO` named it (`redis 7.0.15`), or
        /// `not kv` when it did not.
        server: String,
        /// What the command does.
        what: &'static str,
        /// What to use there instead.
        instead: &'static str,
    },
}

/// Longest part of a server's error line quoted in an [`UpstreamError`]:
/// enough for any real refusal, not a way to flood the logs.
const QUOTED_MAX: usize = 200;

impl UpstreamError {
    /// What an error line from the server means when it refuses the proxy
    /// rather than answers a request: `to_auth` says whether it answers
    /// the proxy's `AUTH`.
    pub fn refusal(line: &[u8], to_auth: bool) -> UpstreamError {
        let text = quote_server_line(line);
        let lower = text.to_ascii_lowercase();
        if lower.contains("max number of clients") {
            UpstreamError::AtClientLimit(text)
        } else if to_auth {
            UpstreamError::RefusedPassword(text)
        } else {
            UpstreamError::Refused(text)
        }
    }

    /// What the server's error line in answer to the proxy's `AUTH` means,
    /// `user` being the user the proxy gave, if it gave one.
    pub fn auth_refusal(line: &[u8], user: Option<&[u8]>) -> UpstreamError {
        match (UpstreamError::refusal(line, true), user) {
            (UpstreamError::RefusedPassword(why), Some(user)) => UpstreamError::RefusedUser {
                user: quote_server_line(user),
                why,
            },
            (refusal, _) => refusal,
        }
    }

    /// Whether the server turned the proxy away (so retrying soon is
    /// pointless and requests meanwhile fail at once with this error).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            UpstreamError::RefusedPassword(_)
                | UpstreamError::RefusedUser { .. }
                | UpstreamError::AtClientLimit(_)
                | UpstreamError::Refused(_)
                | UpstreamError::Malformed
                | UpstreamError::Unasked
        )
    }

    /// Whether the text is a server's client-cap line.
    pub fn is_client_limit_line(line: &[u8]) -> bool {
        line.to_ascii_lowercase()
            .windows(b"max number of clients".len())
            .any(|w| w == b"max number of clients")
    }
}

/// A server's error line as the proxy quotes it (in an [`UpstreamError`],
/// `INFO`, a log line): trimmed, and cut short if long.
pub fn quote_server_line(line: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(line).trim().to_owned();
    if text.len() > QUOTED_MAX {
        let mut end = QUOTED_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Why the proxy refuses a client's `CLIENT TRACKING ON`: it never answers
/// `OK` for tracking it cannot deliver.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProxyTrackingError {
    /// The proxy was started with `--tracking off`.
    #[error("ERR client tracking is off at this proxy (it was started with --tracking off)")]
    Off,
    /// The server refused to track the proxy's reads, so the proxy cannot
    /// tell when a key changes.
    #[error("ERR the proxy's upstream refused client tracking ({0}); the proxy caches by TTL only and cannot send invalidations")]
    UpstreamRefused(String),
    /// RESP2 carries invalidations only to another connection, subscribed
    /// to `__redis__:invalidate` (`REDIRECT`), which the proxy does not
    /// offer. Redis itself accepts and then sends nothing.
    #[error("ERR client tracking at the kv proxy needs RESP3 (HELLO 3): RESP2 would need REDIRECT to a connection subscribed to __redis__:invalidate, which the proxy does not support yet")]
    NeedsResp3,
    /// An option of `CLIENT TRACKING` the proxy does not carry out.
    #[error("ERR the kv proxy does not support CLIENT TRACKING {0} yet")]
    Unsupported(&'static str),
}

impl From<ProxyTrackingError> for Reply {
    fn from(e: ProxyTrackingError) -> Reply {
        Reply::error(e)
    }
}

impl From<DecodeError> for Reply {
    fn from(e: DecodeError) -> Reply {
        Reply::error(e)
    }
}

impl From<CommandError> for Reply {
    fn from(e: CommandError) -> Reply {
        Reply::error(e)
    }
}

impl From<ExecError> for Reply {
    fn from(e: ExecError) -> Reply {
        Reply::error(e)
    }
}

impl From<UpstreamError> for Reply {
    fn from(e: UpstreamError) -> Reply {
        Reply::error(e)
    }
}

/// The line a client over the `--max-clients` cap receives before it is
/// closed; the same words as Redis, so Redis tools show something familiar.
pub const MAX_CLIENTS_REPLY: &[u8] = b"-ERR max number of clients reached\r\n";

/// The error reply to a WebSocket message that is not one command, or too
/// long (see [`bridge`](crate::bridge)).
pub fn rejected_message(why: &str) -> Reply {
    Reply::error(format!("ERR {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_start_with_their_code_word() {
        assert_eq!(
            CommandError::WrongArity { command: "get" }.to_string(),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            CommandError::UnknownSubcommand {
                sub: "frob".into(),
                command: "CONFIG".into()
            }
            .to_string(),
            "ERR unknown subcommand 'frob'. Try CONFIG HELP."
        );
        assert_eq!(
            Reply::from(ExecError::NoAuth),
            Reply::Error(bytes::Bytes::from_static(
                b"NOAUTH Authentication required."
            ))
        );
        assert!(UpstreamError::Unavailable
            .to_string()
            .starts_with("ERR upstream unavailable"));
    }

    #[test]
    fn refusals_name_their_cause_in_the_servers_words() {
        let wrong = ExecError::WrongPass.to_string();
        assert_eq!(
            UpstreamError::refusal(wrong.as_bytes(), true).to_string(),
            format!("ERR upstream refused the proxy's password ({wrong})")
        );
        let cap = &MAX_CLIENTS_REPLY[1..MAX_CLIENTS_REPLY.len() - 2];
        assert!(UpstreamError::is_client_limit_line(cap));
        assert!(!UpstreamError::is_client_limit_line(wrong.as_bytes()));
        // The cap, whether it answers the AUTH or comes unasked.
        for to_auth in [true, false] {
            assert_eq!(
                UpstreamError::refusal(cap, to_auth).to_string(),
                "ERR upstream is at its client limit (ERR max number of clients reached)"
            );
        }
        assert_eq!(
            UpstreamError::refusal(b"NOAUTH Authentication required.", false),
            UpstreamError::Refused("NOAUTH Authentication required.".into())
        );
        // With a user, the refusal names it: Redis's words do not say
        // whether the user or the password is wrong.
        let redis = b"WRONGPASS invalid username-password pair or user is disabled.";
        assert_eq!(
            UpstreamError::auth_refusal(redis, Some(b"alice")).to_string(),
            "ERR upstream refused the proxy's user 'alice' with its password (WRONGPASS invalid username-password pair or user is disabled.)"
        );
        assert_eq!(
            UpstreamError::auth_refusal(cap, Some(b"alice")),
            UpstreamError::refusal(cap, true)
        );
        assert!(UpstreamError::auth_refusal(redis, Some(b"alice")).is_refusal());
        let long = UpstreamError::refusal(&[b'x'; 1_000], false).to_string();
        assert!(
            long.len() < 260,
            "quoted text is bounded: {} bytes",
            long.len()
        );
    }

    #[test]
    fn decode_errors_read_as_redis_writes_them() {
        let cases = [
            (
                DecodeError::InvalidMultibulkLength,
                "ERR Protocol error: invalid multibulk length",
            ),
            (
                DecodeError::InvalidBulkLength,
                "ERR Protocol error: invalid bulk length",
            ),
            (
                DecodeError::MultibulkCountTooBig,
                "ERR Protocol error: too big mbulk count string",
            ),
            (
                DecodeError::BulkCountTooBig,
                "ERR Protocol error: too big bulk count string",
            ),
            (
                DecodeError::InlineTooBig,
                "ERR Protocol error: too big inline request",
            ),
            (
                DecodeError::UnbalancedQuotes,
                "ERR Protocol error: unbalanced quotes in request",
            ),
            (
                DecodeError::ExpectedBulk { got: b'f' },
                "ERR Protocol error: expected '$', got 'f'",
            ),
            (
                DecodeError::ExpectedBulk { got: b'\n' },
                "ERR Protocol error: expected '$', got ' '",
            ),
            (
                DecodeError::ExpectedBulk { got: 0xE9 },
                "ERR Protocol error: expected '$', got '\u{e9}'",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
    }
}
