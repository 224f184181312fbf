//! Commands as values: a [`Spec`] from the [table] and the arguments
//! it was called with, parsed from a [`Frame`] with the arity and the key
//! and value sizes checked once, for every command, from the spec.
//!
//! - [`table`]: what each command is (the [`Spec`]s and their lookup);
//! - [`docs`]: `COMMAND`, `COMMAND INFO`, `COMMAND DOCS` and `HELP`,
//!   generated from the table;
//! - [`admit`]: the one dispatch step the server and the proxy both take
//!   before any handler runs.

pub mod docs;
pub mod table;

use crate::codec::{Frame, Limits};
use crate::errors::{CommandError, ExecError};
use crate::reply::{bulk, header, Reply};
use crate::session::Session;
use bytes::{BufMut, Bytes, BytesMut};
use table::{lookup_sub, Flags, Spec, Table};

/// A request the table knows, with its arguments (the name first, as sent).
#[derive(Debug, Clone)]
pub struct Command {
    spec: &'static Spec,
    args: Vec<Bytes>,
}

/// Two commands are equal when they are the same command with the same
/// operands, however their names were spelled (`put`, `SET`).
impl PartialEq for Command {
    fn eq(&self, other: &Command) -> bool {
        std::ptr::eq(self.spec, other.spec) && self.operands() == other.operands()
    }
}

impl Eq for Command {}

impl Command {
    /// Understands a frame as a command, checking arity and sizes.
    pub fn from_frame(frame: Frame, limits: &Limits) -> Result<Command, CommandError> {
        match frame {
            Frame::Array(args) => Command::from_args(args, limits),
            Frame::Inline(line) => Command::from_inline(line, limits),
        }
    }

    /// Parses an inline line: words separated by spaces and tabs, except
    /// that a command with [`Spec::inline_rest`] takes the rest of the line
    /// from that argument on as one argument (`PUT key value with spaces`).
    pub fn from_inline(line: Bytes, limits: &Limits) -> Result<Command, CommandError> {
        let mut words = Words {
            line: &line,
            pos: 0,
        };
        let Some((s, e)) = words.next() else {
            return Err(unknown(b""));
        };
        let name = line.slice(s..e);
        let found = Table::get().lookup(&name);
        if let Some((called, spec)) = found {
            if let Some(rest_at) = spec.inline_rest {
                let mut args = Vec::with_capacity(rest_at + 1);
                args.push(name);
                while args.len() < rest_at {
                    match words.next() {
                        Some((s, e)) => args.push(line.slice(s..e)),
                        None => break,
                    }
                }
                if let Some(start) = words.rest_start().filter(|_| args.len() == rest_at) {
                    args.push(line.slice(start..));
                }
                if !spec.arity_allows(args.len()) {
                    return Err(CommandError::WrongArity { command: called });
                }
                // However many words the last argument has, it is one
                // argument: held to the same limit as in RESP, which is how
                // the proxy forwards it.
                if args.len() > limits.max_args {
                    return Err(CommandError::TooManyArgs {
                        len: args.len(),
                        limit: limits.max_args,
                    });
                }
                return Command::checked(spec, called, args, limits);
            }
        }
        let mut args = Vec::with_capacity(4);
        args.push(name);
        if limits.max_args == 0 {
            return Err(CommandError::TooManyArgs {
                len: 1 + words.count(),
                limit: 0,
            });
        }
        for (s, e) in words.by_ref() {
            if args.len() == limits.max_args {
                return Err(CommandError::TooManyArgs {
                    len: args.len() + 1 + words.count(),
                    limit: limits.max_args,
                });
            }
            args.push(line.slice(s..e));
        }
        match found {
            Some((called, spec)) => Command::resolve(spec, called, args, limits),
            None => Err(unknown(&args[0])),
        }
    }

    /// Parses RESP arguments; `args[0]` is the command name.
    pub fn from_args(args: Vec<Bytes>, limits: &Limits) -> Result<Command, CommandError> {
        let Some(name) = args.first() else {
            return Err(unknown(b""));
        };
        match Table::get().lookup(name) {
            Some((called, spec)) => Command::resolve(spec, called, args, limits),
            None => Err(unknown(name)),
        }
    }

    /// Builds a command from its arguments, name first, with the default
    /// limits: for clients and tests that make commands rather than
    /// receive them.
    pub fn build<A: AsRef<[u8]>>(args: &[A]) -> Result<Command, CommandError> {
        let args = args
            .iter()
            .map(|a| Bytes::copy_from_slice(a.as_ref()))
            .collect();
        Command::from_args(args, &Limits::default())
    }

    /// Goes down to the subcommand named by the second argument, if the
    /// command has subcommands, then checks.
    #[inline]
    fn resolve(
        spec: &'static Spec,
        called: &'static str,
        args: Vec<Bytes>,
        limits: &Limits,
    ) -> Result<Command, CommandError> {
        let (false, Some(sub_name)) = (spec.subcommands.is_empty(), args.get(1)) else {
            return Command::checked(spec, called, args, limits);
        };
        match lookup_sub(spec.subcommands, sub_name) {
            Some(sub) => Command::checked(sub, sub.name, args, limits),
            None => Err(CommandError::UnknownSubcommand {
                sub: shortened(sub_name),
                command: spec.name.to_ascii_uppercase(),
            }),
        }
    }

    /// Checks the arity, then every key against `max_key` and every other
    /// argument against `max_value`.
    #[inline]
    fn checked(
        spec: &'static Spec,
        called: &'static str,
        args: Vec<Bytes>,
        limits: &Limits,
    ) -> Result<Command, CommandError> {
        if !spec.arity_allows(args.len()) {
            return Err(CommandError::WrongArity { command: called });
        }
        // Nearly always every argument is within both limits: one pass over
        // the lengths settles it, without working out which are keys.
        let longest = args[1..].iter().map(Bytes::len).max().unwrap_or(0);
        if longest <= limits.max_key.min(limits.max_value) {
            return Ok(Command { spec, args });
        }
        let first_value = spec.first_operand();
        for (i, arg) in args.iter().enumerate().skip(1) {
            if spec.keys.holds_key(i, args.len()) {
                if arg.len() > limits.max_key {
                    return Err(CommandError::KeyTooLong {
                        len: arg.len(),
                        limit: limits.max_key,
                    });
                }
            } else if i >= first_value && arg.len() > limits.max_value {
                return Err(CommandError::ValueTooLong {
                    len: arg.len(),
                    limit: limits.max_value,
                });
            }
        }
        Ok(Command { spec, args })
    }

    /// What the command is.
    pub fn spec(&self) -> &'static Spec {
        self.spec
    }

    /// The canonical full name, lower case (`set` for `PUT`).
    pub fn name(&self) -> &'static str {
        self.spec.name
    }

    /// Every argument, the name (as sent) first.
    pub fn args(&self) -> &[Bytes] {
        &self.args
    }

    /// The arguments after the name (and a subcommand's name).
    pub fn operands(&self) -> &[Bytes] {
        &self.args[self.spec.first_operand().min(self.args.len())..]
    }

    /// Argument `i` (0 is the name). Handlers index freely: the arity the
    /// table gives has been checked.
    pub fn arg(&self, i: usize) -> &Bytes {
        &self.args[i]
    }

    /// The arguments, to reuse their vector ([`Decoder::recycle`](crate::Decoder::recycle)).
    pub fn into_args(self) -> Vec<Bytes> {
        self.args
    }

    /// The key arguments, as the table's key positions say.
    pub fn keys(&self) -> impl Iterator<Item = &Bytes> {
        self.spec
            .keys
            .positions(self.args.len())
            .map(|i| &self.args[i])
    }

    /// Appends the command as a RESP2 array of bulk strings, under its
    /// canonical name (`SET` for `PUT`): what every Redis-speaking server
    /// understands.
    pub fn encode_resp(&self, out: &mut BytesMut) {
        let len: usize = self.args.iter().map(|a| a.len() + 16).sum();
        out.reserve(len + 16);
        header(out, b'*', self.args.len());
        let top = self.spec.container().unwrap_or(self.spec.name);
        header(out, b'$', top.len());
        out.extend(top.bytes().map(|b| b.to_ascii_uppercase()));
        out.put_slice(b"\r\n");
        for a in &self.args[1..] {
            bulk(out, a);
        }
    }
}

/// The one dispatch step, the same at the server and at the proxy: checks,
/// from the command's flags, that the connection may run it, and (given
/// the node's persistence state) that a write may run now. Arity and sizes
/// were checked when the command was parsed.
pub fn admit(cmd: &Command, session: &Session, refusing_writes: Option<&str>) -> Result<(), Reply> {
    let flags = cmd.spec.flags;
    if !session.authenticated && !flags.contains(Flags::NO_AUTH) {
        return Err(ExecError::NoAuth.into());
    }
    if let (Some(error), true) = (refusing_writes, flags.contains(Flags::WRITE)) {
        return Err(ExecError::PersistenceFailed(error.to_owned()).into());
    }
    Ok(())
}

fn unknown(name: &[u8]) -> CommandError {
    CommandError::Unknown {
        name: shortened(name),
    }
}

/// A name from the wire, decoded lossily and cut to 64 bytes for an error
/// message.
fn shortened(name: &[u8]) -> String {
    let mut name = String::from_utf8_lossy(name).into_owned();
    if name.len() > 64 {
        let mut cut = 64;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
        name.push('…');
    }
    name
}

/// Appends `args` as a RESP2 array of bulk strings.
pub fn encode_resp_args(args: &[Bytes], out: &mut BytesMut) {
    let len: usize = args.iter().map(|a| a.len() + 16).sum();
    out.reserve(len + 16);
    header(out, b'*', args.len());
    for a in args {
        bulk(out, a);
    }
}

pub(crate) fn put_decimal(out: &mut BytesMut, n: i64) {
    let mut buf = itoa::Buffer::new();
    out.put_slice(buf.format(n).as_bytes());
}

/// Splits an inline line on spaces and tabs, yielding byte ranges.
struct Words<'a> {
    line: &'a [u8],
    pos: usize,
}

impl Words<'_> {
    fn skip_blanks(&mut self) {
        while self.pos < self.line.len() && matches!(self.line[self.pos], b' ' | b'\t') {
            self.pos += 1;
        }
    }

    /// Where the unsplit rest of the line starts, if anything is left.
    fn rest_start(&mut self) -> Option<usize> {
        self.skip_blanks();
        (self.pos < self.line.len()).then_some(self.pos)
    }
}

impl Iterator for Words<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        self.skip_blanks();
        let start = self.pos;
        while self.pos < self.line.len() && !matches!(self.line[self.pos], b' ' | b'\t') {
            self.pos += 1;
        }
        (self.pos > start).then_some((start, self.pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inline(s: &str) -> Result<Command, CommandError> {
        Command::from_inline(Bytes::copy_from_slice(s.as_bytes()), &Limits::default())
    }

    fn words(c: &Command) -> Vec<&[u8]> {
        c.args().iter().map(|a| &a[..]).collect()
    }

    #[test]
    fn put_keeps_inner_spaces_of_the_value() {
        let put = inline("PUT name Derek  Moss").unwrap();
        assert_eq!(put.name(), "set");
        assert_eq!(words(&put), [&b"PUT"[..], b"name", b"Derek  Moss"]);
        let set = inline("set\tk  v ").unwrap();
        assert_eq!(words(&set)[1..], [&b"k"[..], b"v "]);
        assert_eq!(
            inline("Put k"),
            Err(CommandError::WrongArity { command: "put" })
        );
    }

    #[test]
    fn names_are_case_insensitive() {
        assert_eq!(inline("gEt name").unwrap().name(), "get");
        assert_eq!(inline("dump").unwrap().name(), "dump");
        let del = inline("DeL a b").unwrap();
        assert_eq!(del.keys().map(|k| &k[..]).collect::<Vec<_>>(), [b"a", b"b"]);
    }

    #[test]
    fn errors_are_typed() {
        assert_eq!(
            inline("FROB x"),
            Err(CommandError::Unknown {
                name: "FROB".into()
            })
        );
        assert_eq!(
            inline("GET"),
            Err(CommandError::WrongArity { command: "get" })
        );
        assert_eq!(
            inline("GET a b"),
            Err(CommandError::WrongArity { command: "get" })
        );
        assert_eq!(
            inline("DUMP x"),
            Err(CommandError::WrongArity { command: "dump" })
        );
        assert_eq!(
            inline("CONFIG FROB"),
            Err(CommandError::UnknownSubcommand {
                sub: "FROB".into(),
                command: "CONFIG".into()
            })
        );
        assert_eq!(
            inline("CONFIG GET"),
            Err(CommandError::WrongArity {
                command: "config|get"
            })
        );
        let limits = Limits {
            max_key: 2,
            max_value: 3,
            ..Limits::default()
        };
        let long = Command::from_inline(Bytes::from_static(b"PUT abc v"), &limits);
        assert_eq!(long, Err(CommandError::KeyTooLong { len: 3, limit: 2 }));
        let long = Command::from_args(
            vec![
                Bytes::from_static(b"SET"),
                Bytes::from_static(b"k"),
                Bytes::from_static(b"vvvv"),
            ],
            &limits,
        );
        assert_eq!(long, Err(CommandError::ValueTooLong { len: 4, limit: 3 }));
        assert_eq!(
            CommandError::WrongArity { command: "get" }.to_string(),
            "ERR wrong number of arguments for 'get' command"
        );
    }

    #[test]
    fn resp_encoding_round_trips_through_the_parser() {
        let cmd = inline("put k a b\r\nc").unwrap();
        let mut out = BytesMut::new();
        cmd.encode_resp(&mut out);
        // Forwarded under its canonical name.
        assert_eq!(
            &out[..],
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$6\r\na b\r\nc\r\n"
        );
        let mut d = crate::Decoder::new(Limits::default());
        d.feed(&out);
        let frame = d.next_frame().unwrap().unwrap();
        let back = Command::from_frame(frame, &Limits::default()).unwrap();
        assert_eq!(back.spec().name, cmd.spec().name);
        assert_eq!(back.args()[1..], cmd.args()[1..]);
    }

    #[test]
    fn dispatch_refuses_before_auth_and_while_writes_are_refused() {
        let mut session = Session::new(0, false);
        let get = Command::build(&["GET", "k"]).unwrap();
        let ping = Command::build(&["PING"]).unwrap();
        assert_eq!(admit(&get, &session, None), Err(ExecError::NoAuth.into()));
        assert_eq!(admit(&ping, &session, None), Ok(()));
        session.authenticated = true;
        let set = Command::build(&["SET", "k", "v"]).unwrap();
        assert_eq!(admit(&get, &session, Some("disk full")), Ok(()));
        assert_eq!(
            admit(&set, &session, Some("disk full")),
            Err(ExecError::PersistenceFailed("disk full".into()).into())
        );
    }
}
