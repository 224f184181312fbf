//! Commands as values: one variant per command, parsed from a [`Frame`] with
//! its arguments checked, and encoded back for sending upstream.

use crate::codec::{Frame, Limits};
use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// A request the store understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `GET key`: the value, or a "missing" reply.
    Get {
        /// The key to read.
        key: Bytes,
    },
    /// `PUT key value` (alias `SET`): stores the value.
    Put {
        /// The key to write.
        key: Bytes,
        /// The value; inline, the rest of the line after the key.
        value: Bytes,
    },
    /// `DEL key [key …]`: removes keys, replying with how many existed.
    Del {
        /// The keys to remove (at least one).
        keys: Vec<Bytes>,
    },
    /// `DUMP`: every pair, sorted by key.
    Dump,
    /// `PING [message]`.
    Ping {
        /// Echoed back instead of `PONG` when given.
        message: Option<Bytes>,
    },
    /// `ECHO message`.
    Echo {
        /// The message to echo.
        message: Bytes,
    },
    /// `QUIT`: reply `OK`, then close.
    Quit,
    /// `INFO [section]`: counters.
    Info,
    /// `HELP`: the list of commands.
    Help,
    /// `HELLO [protover …]`, sent by Redis client libraries on connect.
    Hello {
        /// The protocol version asked for; only 2 is spoken.
        protover: Option<Bytes>,
    },
    /// `COMMAND [subcommand …]`, sent by `redis-cli` on start.
    CommandInfo,
    /// `CONFIG GET parameter`, sent by `redis-benchmark` on start.
    ConfigGet {
        /// The parameter asked for.
        parameter: Bytes,
    },
    /// `CLIENT SETNAME/SETINFO/…`: accepted and ignored.
    Client,
    /// `AUTH [username] password`.
    Auth {
        /// The password given (the username, if any, must be `default`).
        password: Bytes,
        /// Whether a username other than `default` was given.
        other_user: bool,
    },
    /// `SELECT db`: only database 0 exists.
    Select {
        /// The database index asked for.
        db: Bytes,
    },
}

/// A request that is well framed but not a valid command. The connection
/// carries on after the error reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    /// The command name is not known.
    #[error("ERR unknown command '{name}'")]
    Unknown {
        /// The name as sent, lossily decoded and shortened.
        name: String,
    },
    /// Too few or too many arguments.
    #[error("ERR wrong number of arguments for '{command}' command")]
    WrongArity {
        /// The command's canonical name, lower case as Redis writes it.
        command: &'static str,
    },
    /// A key over [`Limits::max_key`].
    #[error("ERR key too long ({len} bytes, limit {limit})")]
    KeyTooLong {
        /// The key's length.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// An inline command with more words than [`Limits::max_args`] (the
    /// same bound RESP arrays have, so that whatever is accepted here can be
    /// forwarded upstream in RESP).
    #[error("ERR too many arguments ({len}, limit {limit})")]
    TooManyArgs {
        /// The number of words, command name included.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// A value over [`Limits::max_value`].
    #[error("ERR value too long ({len} bytes, limit {limit})")]
    ValueTooLong {
        /// The value's length.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
}

impl Command {
    /// Understands a frame as a command, checking arity and sizes.
    pub fn from_frame(frame: Frame, limits: &Limits) -> Result<Command, CommandError> {
        match frame {
            Frame::Array(args) => Command::from_args(args, limits),
            Frame::Inline(line) => Command::from_inline(line, limits),
        }
    }

    /// Parses an inline line: whitespace-separated words, except that `PUT`
    /// and `SET` take the rest of the line after the key as the value.
    pub fn from_inline(line: Bytes, limits: &Limits) -> Result<Command, CommandError> {
        let mut words = Words {
            line: &line,
            pos: 0,
        };
        let Some(name) = words.next() else {
            return Err(CommandError::Unknown {
                name: String::new(),
            });
        };
        let name = &line[name.0..name.1];
        if name.eq_ignore_ascii_case(b"PUT") || name.eq_ignore_ascii_case(b"SET") {
            let (Some(key), Some(value_start)) = (words.next(), words.rest_start()) else {
                return Err(CommandError::WrongArity { command: "put" });
            };
            // Three arguments, however many words the value has: held to the
            // same limit as in RESP, which is how the proxy forwards it.
            if limits.max_args < 3 {
                return Err(CommandError::TooManyArgs {
                    len: 3,
                    limit: limits.max_args,
                });
            }
            let key = line.slice(key.0..key.1);
            let value = line.slice(value_start..);
            return checked_put(key, value, limits);
        }
        let mut args = Vec::with_capacity(4);
        args.push(Bytes::copy_from_slice(name));
        if limits.max_args == 0 {
            return Err(CommandError::TooManyArgs {
                len: 1 + words.count(),
                limit: 0,
            });
        }
        for (s, e) in words {
            if args.len() == limits.max_args {
                return Err(CommandError::TooManyArgs {
                    len: args.len()
                        + 1
                        + Words {
                            line: &line,
                            pos: e,
                        }
                        .count(),
                    limit: limits.max_args,
                });
            }
            args.push(line.slice(s..e));
        }
        Command::from_args(args, limits)
    }

    /// Parses RESP arguments; `args[0]` is the command name.
    pub fn from_args(mut args: Vec<Bytes>, limits: &Limits) -> Result<Command, CommandError> {
        let Some(name) = args.first() else {
            return Err(CommandError::Unknown {
                name: String::new(),
            });
        };
        let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
        let n = args.len() - 1;
        let arity = |ok: bool, command: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(CommandError::WrongArity { command })
            }
        };
        let cmd = if is("GET") {
            arity(n == 1, "get")?;
            let key = args.swap_remove(1);
            check_key(&key, limits)?;
            Command::Get { key }
        } else if is("SET") || is("PUT") {
            arity(n == 2, if is("SET") { "set" } else { "put" })?;
            let value = args.swap_remove(2);
            let key = args.swap_remove(1);
            return checked_put(key, value, limits);
        } else if is("DEL") {
            arity(n >= 1, "del")?;
            args.remove(0);
            for k in &args {
                check_key(k, limits)?;
            }
            Command::Del { keys: args }
        } else if is("DUMP") {
            arity(n == 0, "dump")?;
            Command::Dump
        } else if is("PING") {
            arity(n <= 1, "ping")?;
            Command::Ping {
                message: args.into_iter().nth(1),
            }
        } else if is("ECHO") {
            arity(n == 1, "echo")?;
            Command::Echo {
                message: args.swap_remove(1),
            }
        } else if is("QUIT") {
            Command::Quit
        } else if is("INFO") {
            Command::Info
        } else if is("HELP") {
            Command::Help
        } else if is("HELLO") {
            Command::Hello {
                protover: args.into_iter().nth(1),
            }
        } else if is("COMMAND") {
            Command::CommandInfo
        } else if is("CONFIG") {
            let get = args.get(1).is_some_and(|s| s.eq_ignore_ascii_case(b"GET"));
            arity(get && n == 2, "config|get")?;
            Command::ConfigGet {
                parameter: args.swap_remove(2),
            }
        } else if is("CLIENT") {
            arity(n >= 1, "client")?;
            Command::Client
        } else if is("AUTH") {
            arity(n == 1 || n == 2, "auth")?;
            let password = args.pop().unwrap_or_default();
            let other_user = n == 2 && !args[1].eq_ignore_ascii_case(b"default");
            Command::Auth {
                password,
                other_user,
            }
        } else if is("SELECT") {
            arity(n == 1, "select")?;
            Command::Select {
                db: args.swap_remove(1),
            }
        } else {
            let mut name = String::from_utf8_lossy(name).into_owned();
            if name.len() > 64 {
                let mut cut = 64;
                while !name.is_char_boundary(cut) {
                    cut -= 1;
                }
                name.truncate(cut);
                name.push('…');
            }
            return Err(CommandError::Unknown { name });
        };
        Ok(cmd)
    }

    /// The canonical upper-case name.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Get { .. } => "GET",
            Command::Put { .. } => "PUT",
            Command::Del { .. } => "DEL",
            Command::Dump => "DUMP",
            Command::Ping { .. } => "PING",
            Command::Echo { .. } => "ECHO",
            Command::Quit => "QUIT",
            Command::Info => "INFO",
            Command::Help => "HELP",
            Command::Hello { .. } => "HELLO",
            Command::CommandInfo => "COMMAND",
            Command::ConfigGet { .. } => "CONFIG",
            Command::Client => "CLIENT",
            Command::Select { .. } => "SELECT",
            Command::Auth { .. } => "AUTH",
        }
    }

    /// The command's arguments, name first, as they would be sent in RESP.
    pub fn to_args(&self) -> Vec<Bytes> {
        let name = Bytes::from_static(self.name().as_bytes());
        let mut v = vec![name];
        match self {
            Command::Get { key } => v.push(key.clone()),
            Command::Put { key, value } => {
                // `SET` is what every Redis-speaking server understands.
                v[0] = Bytes::from_static(b"SET");
                v.push(key.clone());
                v.push(value.clone());
            }
            Command::Del { keys } => v.extend(keys.iter().cloned()),
            Command::Ping { message } => v.extend(message.iter().cloned()),
            Command::Echo { message } => v.push(message.clone()),
            Command::Hello { protover } => v.extend(protover.iter().cloned()),
            Command::ConfigGet { parameter } => {
                v.push(Bytes::from_static(b"GET"));
                v.push(parameter.clone());
            }
            Command::Client => v.push(Bytes::from_static(b"SETNAME")),
            Command::Select { db } => v.push(db.clone()),
            Command::Auth { password, .. } => v.push(password.clone()),
            Command::Dump
            | Command::Quit
            | Command::Info
            | Command::Help
            | Command::CommandInfo => {}
        }
        if matches!(self, Command::Client) {
            v.push(Bytes::from_static(b"kv"));
        }
        v
    }

    /// Whether a client that has not authenticated may run this command.
    pub fn allowed_before_auth(&self) -> bool {
        matches!(
            self,
            Command::Auth { .. } | Command::Ping { .. } | Command::Quit | Command::Help
        )
    }

    /// Appends the command as a RESP2 array of bulk strings.
    pub fn encode_resp(&self, out: &mut BytesMut) {
        encode_resp_args(&self.to_args(), out);
    }
}

/// Appends `args` as a RESP2 array of bulk strings.
pub fn encode_resp_args(args: &[Bytes], out: &mut BytesMut) {
    let len: usize = args.iter().map(|a| a.len() + 16).sum();
    out.reserve(len + 16);
    out.put_u8(b'*');
    put_decimal(out, args.len() as i64);
    out.put_slice(b"\r\n");
    for a in args {
        out.put_u8(b'$');
        put_decimal(out, a.len() as i64);
        out.put_slice(b"\r\n");
        out.put_slice(a);
        out.put_slice(b"\r\n");
    }
}

pub(crate) fn put_decimal(out: &mut BytesMut, n: i64) {
    let mut buf = itoa::Buffer::new();
    out.put_slice(buf.format(n).as_bytes());
}

fn check_key(key: &Bytes, limits: &Limits) -> Result<(), CommandError> {
    if key.len() > limits.max_key {
        return Err(CommandError::KeyTooLong {
            len: key.len(),
            limit: limits.max_key,
        });
    }
    Ok(())
}

fn checked_put(key: Bytes, value: Bytes, limits: &Limits) -> Result<Command, CommandError> {
    check_key(&key, limits)?;
    if value.len() > limits.max_value {
        return Err(CommandError::ValueTooLong {
            len: value.len(),
            limit: limits.max_value,
        });
    }
    Ok(Command::Put { key, value })
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

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn put_keeps_inner_spaces_of_the_value() {
        assert_eq!(
            inline("PUT name Derek  Moss"),
            Ok(Command::Put {
                key: b("name"),
                value: b("Derek  Moss")
            })
        );
        assert_eq!(
            inline("set\tk  v "),
            Ok(Command::Put {
                key: b("k"),
                value: b("v ")
            })
        );
        assert_eq!(
            inline("Put k"),
            Err(CommandError::WrongArity { command: "put" })
        );
    }

    #[test]
    fn names_are_case_insensitive() {
        assert_eq!(inline("gEt name"), Ok(Command::Get { key: b("name") }));
        assert_eq!(inline("dump"), Ok(Command::Dump));
        assert_eq!(
            inline("DeL a b"),
            Ok(Command::Del {
                keys: vec![b("a"), b("b")]
            })
        );
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
        let limits = Limits {
            max_key: 2,
            max_value: 3,
            ..Limits::default()
        };
        let long = Command::from_inline(b("PUT abc v"), &limits);
        assert_eq!(long, Err(CommandError::KeyTooLong { len: 3, limit: 2 }));
        let long = Command::from_args(vec![b("SET"), b("k"), b("vvvv")], &limits);
        assert_eq!(long, Err(CommandError::ValueTooLong { len: 4, limit: 3 }));
        assert_eq!(
            CommandError::WrongArity { command: "get" }.to_string(),
            "ERR wrong number of arguments for 'get' command"
        );
    }

    #[test]
    fn resp_encoding_round_trips_through_the_parser() {
        let cmd = Command::Put {
            key: b("k"),
            value: b("a b\r\nc"),
        };
        let mut out = BytesMut::new();
        cmd.encode_resp(&mut out);
        assert_eq!(
            &out[..],
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$6\r\na b\r\nc\r\n"
        );
        let mut d = crate::Decoder::new(Limits::default());
        d.feed(&out);
        let frame = d.next_frame().unwrap().unwrap();
        assert_eq!(Command::from_frame(frame, &Limits::default()), Ok(cmd));
    }
}
