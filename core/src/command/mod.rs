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
use crate::errors::{CommandError, DecodeError, ExecError};
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

    /// Parses an inline line, splitting it into words as Redis's
    /// `sdssplitargs` does:
    ///
    /// - words are separated by blanks (space, tab, `\r`, `\n`, vertical tab,
    ///   form feed);
    /// - `"…"` quotes a word, blanks included, with the escapes `\n`, `\r`,
    ///   `\t`, `\b`, `\a`, `\xHH` (two hex digits) and `\` before any other
    ///   byte for that byte (`\"`, `\\`); `'…'` quotes a word with `\'` as
    ///   its only escape. A quote may begin mid-word (`a"b c"` is `ab c`),
    ///   and the word ends at the closing quote;
    /// - a quote left open, or a closing quote followed by anything but a
    ///   blank or the end of the line, is *unbalanced*.
    ///
    /// So `SET "a b" c` sets the key `a b`. One exception is kv's own: for a
    /// command with [`Spec::inline_rest`] (`PUT`, alias of `SET`, but not
    /// `SET` itself, whose options are words), the
    /// words before that argument are split as above, and the rest of the
    /// line from it on is one argument: as it stands, inner blanks and
    /// quotes kept, when it does not start with a quote
    /// (`PUT key it's a "value"`); when it does, it is split as above, and if
    /// that gives exactly one word it is the argument (`PUT key "a \"b\""`
    /// stores `a "b"`), otherwise the rest as it stands is.
    ///
    /// A line from a [`Decoder`](crate::Decoder) never has unbalanced quotes:
    /// the decoder refuses them with [`DecodeError::UnbalancedQuotes`] and
    /// closes the connection, as Redis does. Given such a line directly
    /// (`kv cli`, the browser console), this refuses it with
    /// [`CommandError::UnbalancedQuotes`].
    pub fn from_inline(line: Bytes, limits: &Limits) -> Result<Command, CommandError> {
        let bytes = |w: Word| match w {
            Word::Plain(s, e) => line.slice(s..e),
            Word::Unquoted(v) => Bytes::from(v),
        };
        let Split { found, args, len } = split(&line, limits.max_args, bytes)
            .map_err(|Unbalanced| CommandError::UnbalancedQuotes)?;
        let Some(name) = args.first() else {
            return Err(unknown(b""));
        };
        if let Some((called, spec)) =
            found.filter(|(called, spec)| spec.inline_rest_for(called).is_some())
        {
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
        // The same bound as RESP arrays have, so that whatever is accepted
        // here can be forwarded upstream in RESP.
        if len > limits.max_args {
            return Err(CommandError::TooManyArgs {
                len,
                limit: limits.max_args,
            });
        }
        match found {
            Some((called, spec)) => Command::resolve(spec, called, args, limits),
            None => Err(unknown(name)),
        }
    }

    /// Checks that an inline line's quotes are balanced as
    /// [`Command::from_inline`] splits it: what the [`Decoder`](crate::Decoder)
    /// checks of every line, and what a client that sends inline lines
    /// can check before sending one, to refuse what the server would.
    pub fn check_inline(line: &[u8]) -> Result<(), DecodeError> {
        // Nearly every line has no quote at all, and then nothing can be
        // unbalanced: one fast scan instead of a split.
        if memchr::memchr2(b'"', b'\'', line).is_none() {
            return Ok(());
        }
        split(line, 0, drop)
            .map(drop)
            .map_err(|Unbalanced| DecodeError::UnbalancedQuotes)
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

/// Whether C's `isspace` holds for `b` (in the C locale): the blanks
/// Redis's `sdssplitargs` skips between inline words.
pub(crate) fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C)
}

/// Whether `b` ends an unquoted word. Fewer bytes than [`is_blank`]:
/// `sdssplitargs` ends words on these four only, so a vertical tab or form
/// feed inside a word stays in it.
fn ends_word(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// An inline line's quotes do not split into words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unbalanced;

/// One word of an inline line.
enum Word {
    /// `line[start..end]` as it stands: shared with the line, not copied.
    Plain(usize, usize),
    /// A word with quotes or escapes, undone.
    Unquoted(Vec<u8>),
}

/// An inline line split into arguments.
struct Split<T> {
    /// The command, if the table knows the first word.
    found: Option<(&'static str, &'static Spec)>,
    /// The arguments, the name first: all of them for a command with
    /// [`Spec::inline_rest`] (there are few), else at most `keep` (and the
    /// name).
    args: Vec<T>,
    /// How many arguments the line holds, kept or not.
    len: usize,
}

/// Splits `line` as [`Command::from_inline`] says, turning each argument
/// kept into a `T` with `make`. Every word is read, kept or not, so that
/// an unbalanced quote is found wherever it is.
fn split<T>(
    line: &[u8],
    keep: usize,
    mut make: impl FnMut(Word) -> T,
) -> Result<Split<T>, Unbalanced> {
    let mut words = Words { line, pos: 0 };
    let Some(name) = words.next().transpose()? else {
        return Ok(Split {
            found: None,
            args: Vec::new(),
            len: 0,
        });
    };
    let found = Table::get().lookup(words.text(&name));
    let mut args = Vec::with_capacity(4);
    args.push(make(name));
    if let Some(rest_at) = found.and_then(|(called, spec)| spec.inline_rest_for(called)) {
        while args.len() < rest_at {
            match words.next() {
                Some(word) => args.push(make(word?)),
                None => break,
            }
        }
        if args.len() == rest_at {
            if let Some(rest) = words.rest()? {
                args.push(make(rest));
            }
        }
        let len = args.len();
        return Ok(Split { found, args, len });
    }
    let mut len = 1;
    for word in words {
        let word = word?;
        len += 1;
        if args.len() < keep {
            args.push(make(word));
        }
    }
    Ok(Split { found, args, len })
}

/// Splits an inline line into words, yielding them one by one.
struct Words<'a> {
    line: &'a [u8],
    pos: usize,
}

impl Words<'_> {
    fn skip_blanks(&mut self) {
        while self.pos < self.line.len() && is_blank(self.line[self.pos]) {
            self.pos += 1;
        }
    }

    /// The bytes of a word.
    fn text<'w>(&'w self, word: &'w Word) -> &'w [u8] {
        match word {
            Word::Plain(s, e) => &self.line[*s..*e],
            Word::Unquoted(v) => v,
        }
    }

    /// The rest of the line as one argument, for [`Spec::inline_rest`]: as
    /// it stands unless it starts with a quote and is one word.
    fn rest(&mut self) -> Result<Option<Word>, Unbalanced> {
        self.skip_blanks();
        let start = self.pos;
        let Some(&first) = self.line.get(start) else {
            return Ok(None);
        };
        let as_is = Word::Plain(start, self.line.len());
        if !matches!(first, b'"' | b'\'') {
            return Ok(Some(as_is));
        }
        let word = self.word()?;
        if self.next().transpose()?.is_some() {
            // Read on to the end: an unbalanced quote there is one still.
            for word in self.by_ref() {
                word?;
            }
            return Ok(Some(as_is));
        }
        Ok(Some(word))
    }

    /// Reads the word that starts at `pos` (not a blank).
    fn word(&mut self) -> Result<Word, Unbalanced> {
        let start = self.pos;
        while let Some(&b) = self.line.get(self.pos) {
            if ends_word(b) {
                break;
            }
            if matches!(b, b'"' | b'\'') {
                let mut out = self.line[start..self.pos].to_vec();
                self.pos += 1;
                if b == b'"' {
                    self.double_quoted(&mut out)?;
                } else {
                    self.single_quoted(&mut out)?;
                }
                return Ok(Word::Unquoted(out));
            }
            self.pos += 1;
        }
        Ok(Word::Plain(start, self.pos))
    }

    /// Reads the inside of `"…"` and its closing quote, undoing escapes.
    fn double_quoted(&mut self, out: &mut Vec<u8>) -> Result<(), Unbalanced> {
        let line = self.line;
        loop {
            let Some(&b) = line.get(self.pos) else {
                return Err(Unbalanced);
            };
            let next = line.get(self.pos + 1).copied();
            let hex = |i: usize| line.get(i).and_then(|&d| char::from(d).to_digit(16));
            if let (b'\\', Some(b'x'), Some(hi), Some(lo)) =
                (b, next, hex(self.pos + 2), hex(self.pos + 3))
            {
                // Two hex digits are at most 0xFF.
                out.push((hi * 16 + lo) as u8);
                self.pos += 4;
                continue;
            }
            match (b, next) {
                (b'\\', Some(c)) => {
                    out.push(match c {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                    self.pos += 2;
                }
                (b'"', _) => {
                    self.pos += 1;
                    return self.closed();
                }
                // A `\` ending the line falls here too, and the quote is
                // then left open.
                _ => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
    }

    /// Reads the inside of `'…'` and its closing quote: `\'` is the only
    /// escape, any other `\` is itself.
    fn single_quoted(&mut self, out: &mut Vec<u8>) -> Result<(), Unbalanced> {
        loop {
            match (self.line.get(self.pos), self.line.get(self.pos + 1)) {
                (None, _) => return Err(Unbalanced),
                (Some(b'\\'), Some(b'\'')) => {
                    out.push(b'\'');
                    self.pos += 2;
                }
                (Some(b'\''), _) => {
                    self.pos += 1;
                    return self.closed();
                }
                (Some(&b), _) => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
    }

    /// After a closing quote: the word must end there. (Redis's rule:
    /// `"a"b` is refused, not read as `ab`.)
    fn closed(&self) -> Result<(), Unbalanced> {
        match self.line.get(self.pos) {
            Some(&b) if !is_blank(b) => Err(Unbalanced),
            _ => Ok(()),
        }
    }
}

impl Iterator for Words<'_> {
    type Item = Result<Word, Unbalanced>;

    fn next(&mut self) -> Option<Result<Word, Unbalanced>> {
        self.skip_blanks();
        (self.pos < self.line.len()).then(|| self.word())
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
        // SET itself takes words, as in Redis: its options follow the value.
        let set = inline("set\tk  v EX 10").unwrap();
        assert_eq!(words(&set)[1..], [&b"k"[..], b"v", b"EX", b"10"]);
        let put = inline("put k v EX 10").unwrap();
        assert_eq!(words(&put)[1..], [&b"k"[..], b"v EX 10"]);
        assert_eq!(
            inline("Put k"),
            Err(CommandError::WrongArity { command: "put" })
        );
    }

    #[test]
    fn inline_words_split_as_redis_splits_them() {
        let cases: &[(&str, &[&[u8]])] = &[
            ("DEL a  b\tc\x0b\x0cd", &[b"DEL", b"a", b"b", b"c\x0b\x0cd"]),
            ("DEL a\rb\nc", &[b"DEL", b"a", b"b", b"c"]),
            (" \x0bDEL  a ", &[b"DEL", b"a"]),
            ("DEL \"a b\" 'c d'", &[b"DEL", b"a b", b"c d"]),
            ("DEL \"\" ''", &[b"DEL", b"", b""]),
            ("DEL a\"b c\" d'e f'", &[b"DEL", b"ab c", b"de f"]),
            ("DEL \"a\"\x0b\"b\"", &[b"DEL", b"a", b"b"]),
            (
                r#"DEL "\n\r\t\b\a\\\"\q\'""#,
                &[b"DEL", b"\n\r\t\x08\x07\\\"q'"],
            ),
            (
                r#"DEL "\x41\x4a\x4A\xff\x00" "\x4" "\xzz" "\x""#,
                &[b"DEL", b"AJJ\xff\x00", b"x4", b"xzz", b"x"],
            ),
            (
                r#"DEL 'it\'s' 'a\nb\\x' 'x"y'"#,
                &[b"DEL", b"it's", b"a\\nb\\\\x", b"x\"y"],
            ),
            ("\"DEL\" 'k'", &[b"DEL", b"k"]),
        ];
        for (line, expected) in cases {
            let cmd = inline(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            assert_eq!(words(&cmd), *expected, "{line:?}");
            assert_eq!(Command::check_inline(line.as_bytes()), Ok(()), "{line:?}");
        }
    }

    #[test]
    fn every_byte_can_be_quoted() {
        for b in 0..=255u8 {
            let hex = inline(&format!("DEL \"\\x{b:02x}\" \"\\x{b:02X}\"")).unwrap();
            assert_eq!(words(&hex)[1..], [[b], [b]], "{b:#x}");
            if b != b'"' && b != b'\\' {
                let mut line = b"ECHO \"".to_vec();
                line.extend([b, b'"']);
                let cmd = Command::from_inline(Bytes::from(line), &Limits::default()).unwrap();
                assert_eq!(words(&cmd)[1..], [[b]], "{b:#x}");
            }
        }
    }

    #[test]
    fn unbalanced_quotes_are_found_wherever_they_are() {
        for line in [
            "DEL \"a",
            "DEL 'a",
            "DEL \"a\"b",
            "DEL 'a'b",
            "DEL \"a\\\"",
            "DEL \"a\\",
            "DEL 'a\\'",
            "DEL 'a\\\\'",
            "DEL it's",
            "\"DEL",
            "FROB x \"y",
            "DEL a b c \"d",
            "PUT \"k v",
            "PUT \"k\"v v",
            "PUT k \"v",
            "PUT k 'v'x",
            "PUT k \"a\" \"b",
            "PUT k \"a\" b'",
        ] {
            assert_eq!(
                Command::check_inline(line.as_bytes()),
                Err(DecodeError::UnbalancedQuotes),
                "{line:?}"
            );
        }
        // Given one anyway, `from_inline` refuses it too.
        for line in ["GET \"k", "DEL 'a'b \"c", "PUT \"k v w"] {
            assert_eq!(
                inline(line),
                Err(CommandError::UnbalancedQuotes),
                "{line:?}"
            );
        }
    }

    #[test]
    fn inline_rest_is_the_line_unless_it_is_one_quoted_word() {
        let cases: &[(&str, &[u8], &[u8])] = &[
            ("PUT k it's a \"value\"", b"k", b"it's a \"value\""),
            ("PUT k a  b ", b"k", b"a  b "),
            ("PUT k \"a \\\"b\\\"\"", b"k", b"a \"b\""),
            ("PUT k 'a b'  ", b"k", b"a b"),
            ("PUT k \"\"", b"k", b""),
            ("PUT k \"a\" b", b"k", b"\"a\" b"),
            ("PUT k 'a' 'b'", b"k", b"'a' 'b'"),
            (
                "PUT \"my key\" value with spaces",
                b"my key",
                b"value with spaces",
            ),
            ("SET 'k' \"v\"", b"k", b"v"),
            ("set \"a b\" c", b"a b", b"c"),
            ("PUT k v\"w x\"", b"k", b"v\"w x\""),
        ];
        for (line, key, value) in cases {
            let cmd = inline(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            assert_eq!(words(&cmd)[1..], [*key, *value], "{line:?}");
            assert_eq!(Command::check_inline(line.as_bytes()), Ok(()), "{line:?}");
        }
        assert_eq!(
            inline("PUT \"k\""),
            Err(CommandError::WrongArity { command: "put" })
        );
    }

    #[test]
    fn inline_argument_count_is_held_to_max_args() {
        let limits = Limits {
            max_args: 3,
            ..Limits::default()
        };
        let line =
            |s: &'static str| Command::from_inline(Bytes::from_static(s.as_bytes()), &limits);
        assert!(line("DEL \"a b\" 'c d'").is_ok());
        assert_eq!(
            line("DEL \"a b\" 'c d' e f"),
            Err(CommandError::TooManyArgs { len: 5, limit: 3 })
        );
        assert_eq!(
            line("FROB a b c"),
            Err(CommandError::TooManyArgs { len: 4, limit: 3 })
        );
        assert!(line("PUT k a b c d").is_ok());
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
