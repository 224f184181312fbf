//! The command table: the one place a command is described.
//!
//! A [`Spec`] says what a command *is* the way Redis's command table does:
//! its name and aliases, its arity (positive: exactly that many arguments,
//! the name included; negative: at least that many), its [`Flags`], where
//! its keys are ([`Keys`], Redis's first/last/step), its documentation, and
//! its [`Handler`]. Everything else is derived from it: parsing checks the
//! arity and the key and value sizes, the one dispatch step
//! ([`admit`](super::admit)) checks authentication and refused writes, the
//! proxy routes by the flags and keys, and `COMMAND`, `COMMAND DOCS` and
//! `HELP` are generated from it.
//!
//! The specs are written by their families (`families/*.rs`), one const
//! per command, as Dragonfly registers them next to their handlers.

use super::Command;
use crate::db::{Db, Effect};
use crate::reply::{Reply, ReplyOut};
use crate::session::Local;
use bitflags::bitflags;
use std::sync::OnceLock;

bitflags! {
    /// What a command does, in Redis's terms (`COMMAND INFO` shows them
    /// under Redis's names).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Flags: u32 {
        /// Reads the keyspace and changes nothing.
        const READONLY = 1 << 0;
        /// May change the keyspace.
        const WRITE = 1 << 1;
        /// Runs in constant (or logarithmic) time.
        const FAST = 1 << 2;
        /// May run before the connection authenticates (Redis's `no-auth`).
        const NO_AUTH = 1 << 3;
        /// Not allowed inside a transaction (Redis's `no-multi`).
        const NO_MULTI = 1 << 5;
        /// Allowed while the data is loading.
        const LOADING = 1 << 6;
        /// Allowed on a replica with stale data.
        const STALE = 1 << 7;
        /// An administrative command.
        const ADMIN = 1 << 8;
        /// May grow memory: refused when memory is full.
        const DENYOOM = 1 << 9;
        /// Runs at once inside `MULTI` instead of being queued (the
        /// transaction commands themselves, `QUIT`). kv's own; not shown.
        const IMMEDIATE = 1 << 10;
        /// Needs state kept on the connection across commands (a
        /// transaction, watched keys): the proxy cannot forward it over its
        /// shared upstream pipe. kv's own; not shown.
        const CONN_STATE = 1 << 11;
        /// A publish/subscribe command (Redis's `pubsub`).
        const PUBSUB = 1 << 12;
        /// Allowed while a RESP2 connection is subscribed, when every other
        /// command is refused (the subscription commands, `PING`, `QUIT`).
        /// kv's own; not shown.
        const SUBSCRIBED_OK = 1 << 13;
    }
}

impl Flags {
    /// Runs at any time: while the data loads, and on a stale replica.
    pub const ANYTIME: Flags = Flags::LOADING.union(Flags::STALE);

    /// The flags `COMMAND INFO` lists, with Redis's names, in Redis's order.
    pub const NAMES: &'static [(Flags, &'static str)] = &[
        (Flags::WRITE, "write"),
        (Flags::READONLY, "readonly"),
        (Flags::DENYOOM, "denyoom"),
        (Flags::ADMIN, "admin"),
        (Flags::LOADING, "loading"),
        (Flags::STALE, "stale"),
        (Flags::FAST, "fast"),
        (Flags::NO_AUTH, "no_auth"),
        (Flags::NO_MULTI, "no_multi"),
        (Flags::PUBSUB, "pubsub"),
    ];
}

/// Where a command's keys are, as Redis's legacy key range: the first key
/// argument, the last (negative counts from the end: -1 is the last
/// argument), and the step between keys. `first == 0` means no keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys {
    /// Index of the first key (the command name is index 0).
    pub first: usize,
    /// Index of the last key; negative from the end of the arguments.
    pub last: isize,
    /// Distance between keys (2 for `MSET key value key value`).
    pub step: usize,
    /// What the command does to them (shown in `COMMAND INFO`'s key specs).
    pub access: KeyAccess,
}

/// What a command does to its keys, as the flags of Redis's key specs say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAccess {
    /// Reads them (`RO access`).
    Read,
    /// Overwrites them whatever they held (`OW update`).
    Overwrite,
    /// Removes them (`RM delete`).
    Remove,
}

impl KeyAccess {
    /// The key-spec flags Redis shows for this access.
    pub fn flag_names(self) -> &'static [&'static str] {
        match self {
            KeyAccess::Read => &["RO", "access"],
            KeyAccess::Overwrite => &["OW", "update"],
            KeyAccess::Remove => &["RM", "delete"],
        }
    }
}

impl Keys {
    /// A command without keys.
    pub const NONE: Keys = Keys {
        first: 0,
        last: 0,
        step: 0,
        access: KeyAccess::Read,
    };

    /// Keys from `first` to `last` every `step`.
    pub const fn range(first: usize, last: isize, step: usize, access: KeyAccess) -> Keys {
        Keys {
            first,
            last,
            step,
            access,
        }
    }

    /// One key, at `index`.
    pub const fn one(index: usize, access: KeyAccess) -> Keys {
        Keys::range(index, index as isize, 1, access)
    }

    /// Whether the command has keys at all.
    pub const fn is_none(&self) -> bool {
        self.first == 0
    }

    /// The argument indexes that hold keys, for a command of `argc`
    /// arguments (name included).
    pub fn positions(&self, argc: usize) -> impl Iterator<Item = usize> {
        let (first, end, step) = self.span(argc);
        (first..end).step_by(step)
    }

    /// Whether argument `i` of a command of `argc` arguments is a key.
    pub fn holds_key(&self, i: usize, argc: usize) -> bool {
        let (first, end, step) = self.span(argc);
        (first..end).contains(&i) && (i - first) % step == 0
    }

    /// The keys' range of argument indexes (end exclusive) and step.
    fn span(&self, argc: usize) -> (usize, usize, usize) {
        let last = if self.last < 0 {
            argc as isize + self.last
        } else {
            self.last
        };
        let first = self.first;
        let end = if self.is_none() || last < first as isize {
            first
        } else {
            (last as usize).min(argc.saturating_sub(1)) + 1
        };
        (first, end, self.step.max(1))
    }
}

/// The type of a documented argument, as `COMMAND DOCS` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgKind {
    /// A key.
    Key,
    /// Any string.
    String,
    /// An integer.
    Integer,
    /// A fixed word (`EX`, `NX`); its [`Arg::token`] is the word.
    PureToken,
    /// One of [`Arg::args`].
    Oneof,
    /// All of [`Arg::args`], in order.
    Block,
}

impl ArgKind {
    /// The name `COMMAND DOCS` uses.
    pub fn name(self) -> &'static str {
        match self {
            ArgKind::Key => "key",
            ArgKind::String => "string",
            ArgKind::Integer => "integer",
            ArgKind::PureToken => "pure-token",
            ArgKind::Oneof => "oneof",
            ArgKind::Block => "block",
        }
    }
}

/// One documented argument of a command, for `COMMAND DOCS` (redis-cli's
/// hints) and `HELP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arg {
    /// The argument's name.
    pub name: &'static str,
    /// Its type.
    pub kind: ArgKind,
    /// The word that introduces it, if any.
    pub token: Option<&'static str>,
    /// It may be left out.
    pub optional: bool,
    /// It may be repeated.
    pub multiple: bool,
    /// The alternatives of a `Oneof`, or the parts of a `Block`.
    pub args: &'static [Arg],
}

impl Arg {
    const fn new(name: &'static str, kind: ArgKind) -> Arg {
        Arg {
            name,
            kind,
            token: None,
            optional: false,
            multiple: false,
            args: &[],
        }
    }

    /// A key argument.
    pub const fn key(name: &'static str) -> Arg {
        Arg::new(name, ArgKind::Key)
    }

    /// A string argument.
    pub const fn string(name: &'static str) -> Arg {
        Arg::new(name, ArgKind::String)
    }

    /// An integer argument.
    pub const fn integer(name: &'static str) -> Arg {
        Arg::new(name, ArgKind::Integer)
    }

    /// A fixed word.
    pub const fn token(name: &'static str, word: &'static str) -> Arg {
        let mut a = Arg::new(name, ArgKind::PureToken);
        a.token = Some(word);
        a
    }

    /// One of `args`.
    pub const fn oneof(name: &'static str, args: &'static [Arg]) -> Arg {
        let mut a = Arg::new(name, ArgKind::Oneof);
        a.args = args;
        a
    }

    /// All of `args`, in order (`key value` of `MSET`).
    pub const fn block(name: &'static str, args: &'static [Arg]) -> Arg {
        let mut a = Arg::new(name, ArgKind::Block);
        a.args = args;
        a
    }

    /// Introduced by the word `word` (`EX seconds`).
    pub const fn with_token(mut self, word: &'static str) -> Arg {
        self.token = Some(word);
        self
    }

    /// May be left out.
    pub const fn optional(mut self) -> Arg {
        self.optional = true;
        self
    }

    /// May be repeated.
    pub const fn multiple(mut self) -> Arg {
        self.multiple = true;
        self
    }
}

/// The group a command belongs to, as `COMMAND DOCS` names it; also the
/// family module that registers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Keyspace commands (`families/keyspace.rs`): DEL, EXISTS, DUMP.
    Generic,
    /// String commands (`families/string.rs`): GET, SET.
    String,
    /// Connection commands (`families/connection.rs`): PING, AUTH, QUIT …
    Connection,
    /// Server commands (`families/server.rs`): INFO, CONFIG, COMMAND, HELP.
    Server,
    /// Transactions (`families/transaction.rs`): MULTI, EXEC, WATCH …
    Transactions,
    /// Publish/subscribe (`families/pubsub.rs`): SUBSCRIBE, PUBLISH …
    PubSub,
}

impl Group {
    /// The name `COMMAND DOCS` uses.
    pub fn name(self) -> &'static str {
        match self {
            Group::Generic => "generic",
            Group::String => "string",
            Group::Connection => "connection",
            Group::Server => "server",
            Group::Transactions => "transactions",
            Group::PubSub => "pubsub",
        }
    }
}

/// Runs a command against the database. Only the server runs these; the
/// proxy forwards them, or answers them from its cache, by their flags.
/// The reply is written straight into the connection's output, so a value
/// goes from the store to the socket without a copy of its own.
pub type DataHandler = fn(&mut Db, &Command, &mut dyn ReplyOut);

/// Answers a command from the connection's session and the node (server or
/// proxy) that received it, without the keyspace.
pub type LocalHandler = fn(&mut Local<'_>, &Command) -> Reply;

/// How a command is carried out.
#[derive(Debug, Clone, Copy)]
pub enum Handler {
    /// Reads or writes the keyspace.
    Data(DataHandler),
    /// Answered wherever it arrives, never forwarded: the connection's own
    /// state (AUTH, SELECT, CLIENT …) and facts about the node itself.
    Local(LocalHandler),
    /// A transaction command, run by the server with the connection's
    /// transaction state (`server/tx.rs`).
    Tx(crate::server::TxOp),
    /// A publish/subscribe command, run by the server with its channels
    /// and the connection's subscriptions (`server/pubsub.rs`).
    PubSub(crate::server::PubSubOp),
    /// A container called only with one of its [`Spec::subcommands`]
    /// (`CONFIG GET`), which has the handler; its arity (-2) refuses the
    /// bare name.
    Container,
}

/// What the proxy may do with a data command beyond forwarding it.
#[derive(Debug, Clone, Copy)]
pub enum Cache {
    /// Nothing: the reply is passed on; the command's keys are dropped from
    /// the cache when it is acknowledged (a read observed them, a write
    /// changed them).
    No,
    /// The reply is the value of the command's only key (or nil): it may be
    /// answered from the cache, and its reply fills it.
    Value,
    /// The reply is an array of the values of its keys, in order (`MGET`):
    /// each may be answered from the cache, and each fills it.
    Values,
    /// An acknowledged reply says what the command did to its keys; the
    /// effects are written through to the cache. Keys not named by the
    /// effects are dropped from it.
    /// The function appends the effects to the vector it is given (the
    /// proxy reuses one, so a write-through allocates nothing).
    WriteThrough(fn(&Command, &Reply, &mut Vec<Effect>)),
}

/// How the inline (telnet) form of a RESP reply reads back: RESP2 has no
/// pair or text type (RESP3's map and verbatim string are close, not the
/// same), so a reply relayed in RESP (by the proxy from its upstream, or to
/// `kv cli`) is restored to its inline shape with this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// As it is.
    Plain,
    /// A flat `key, value, …` array of bulk strings (or a RESP3 map of
    /// them) is key/value pairs (`DUMP`).
    Pairs,
    /// A bulk string (or a RESP3 verbatim string) is multi-line text
    /// (`INFO`, `HELP`).
    Text,
}

impl Shape {
    /// The reply in its inline shape, if RESP lost it.
    pub fn restore(self, reply: Reply) -> Reply {
        match (self, reply) {
            (Shape::Pairs, Reply::Array(items))
                if items.len() % 2 == 0 && items.iter().all(|r| matches!(r, Reply::Bulk(_))) =>
            {
                let mut pairs = Vec::with_capacity(items.len() / 2);
                let mut it = items.into_iter();
                while let (Some(Reply::Bulk(k)), Some(Reply::Bulk(v))) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                Reply::Pairs(pairs)
            }
            // RESP3 sends DUMP's pairs as a map.
            (Shape::Pairs, Reply::Map(entries))
                if entries
                    .iter()
                    .all(|(k, v)| matches!((k, v), (Reply::Bulk(_), Reply::Bulk(_)))) =>
            {
                let mut pairs = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    if let (Reply::Bulk(k), Reply::Bulk(v)) = (k, v) {
                        pairs.push((k, v));
                    }
                }
                Reply::Pairs(pairs)
            }
            // RESP3 sends text as a verbatim string.
            (Shape::Text, Reply::Bulk(text) | Reply::Verbatim { text, .. }) => {
                Reply::Text(String::from_utf8_lossy(&text).replace("\r\n", "\n"))
            }
            (_, reply) => reply,
        }
    }
}

/// What the proxy tells a client that sends one of kv's own commands
/// through it to a server that is not kv (Redis): that server would
/// refuse it with an error that does not say why, or run its own command
/// of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvOnly {
    /// What the command does, as the error names it (`DUMP of every pair`).
    pub what: &'static str,
    /// What to use instead on such a server, a sentence.
    pub instead: &'static str,
}

/// Everything about one command.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The full name, lower case: `get`, or `config|get` for a subcommand.
    pub name: &'static str,
    /// Other names it answers to, lower case (`put` for `set`).
    pub aliases: &'static [&'static str],
    /// Redis's arity: positive is exact, negative a minimum; the name (and
    /// for a subcommand, the container's name) counts.
    pub arity: i32,
    /// What it does.
    pub flags: Flags,
    /// Where its keys are.
    pub keys: Keys,
    /// Its group (and family).
    pub group: Group,
    /// One line for `HELP` and `COMMAND DOCS`.
    pub summary: &'static str,
    /// The Redis version that introduced it (kv's first version for its own).
    pub since: &'static str,
    /// Its time complexity.
    pub complexity: &'static str,
    /// Its arguments, for `COMMAND DOCS` and `HELP`.
    pub args: &'static [Arg],
    /// Inline only, and only when called by the name given: from this
    /// argument on, the rest of the line is one argument, inner spaces kept
    /// (`PUT key value with spaces`, while `SET k v EX 10` has options).
    pub inline_rest: Option<(usize, &'static str)>,
    /// How the proxy may cache it.
    pub cache: Cache,
    /// How its RESP reply reads back inline.
    pub shape: Shape,
    /// How it is carried out.
    pub handler: Handler,
    /// Its subcommands (`config|get` …), chosen by the second argument.
    pub subcommands: &'static [Spec],
    /// The keyspace event a key it writes raises (`set`, `incrby` …, as
    /// Redis names them; see `server/notify.rs`).
    pub notify: &'static str,
    /// Set for kv's own commands, which a Redis server does not have (or
    /// has under the same name for another job): what the proxy says in
    /// front of such a server instead of forwarding it.
    pub kv_only: Option<KvOnly>,
    /// Where the `|` of a subcommand's name is (the name's length for a
    /// top-level command): worked out once, here, rather than per request.
    bar: usize,
}

impl Spec {
    /// A command with no keys, no documented arguments and no special
    /// rules; the builder methods below add them.
    pub const fn new(
        name: &'static str,
        arity: i32,
        flags: Flags,
        group: Group,
        summary: &'static str,
        handler: Handler,
    ) -> Spec {
        Spec {
            name,
            aliases: &[],
            arity,
            flags,
            keys: Keys::NONE,
            group,
            summary,
            since: "1.0.0",
            complexity: "O(1)",
            args: &[],
            inline_rest: None,
            cache: Cache::No,
            shape: Shape::Plain,
            handler,
            subcommands: &[],
            notify: "set",
            kv_only: None,
            bar: bar_at(name),
        }
    }

    /// The keyspace event a key it writes raises, if not `set`.
    pub const fn notifies(mut self, event: &'static str) -> Spec {
        self.notify = event;
        self
    }

    /// The `HELP` subcommand of a container, named `"<container>|help"`:
    /// lists the container's subcommands, as Redis's do (its unknown
    /// subcommand error points there).
    pub const fn container_help(name: &'static str, group: Group) -> Spec {
        Spec::new(
            name,
            2,
            Flags::ANYTIME,
            group,
            "Shows the subcommands and what they do.",
            Handler::Local(super::docs::container_help),
        )
        .since("5.0.0")
    }

    /// A command of kv's own (see [`KvOnly`]).
    pub const fn kv_only(mut self, what: &'static str, instead: &'static str) -> Spec {
        self.kv_only = Some(KvOnly { what, instead });
        self
    }

    /// Its subcommands.
    pub const fn subcommands(mut self, subcommands: &'static [Spec]) -> Spec {
        self.subcommands = subcommands;
        self
    }

    /// Other names.
    pub const fn aliases(mut self, aliases: &'static [&'static str]) -> Spec {
        self.aliases = aliases;
        self
    }

    /// Where the keys are.
    pub const fn keys(mut self, keys: Keys) -> Spec {
        self.keys = keys;
        self
    }

    /// The documented arguments.
    pub const fn args(mut self, args: &'static [Arg]) -> Spec {
        self.args = args;
        self
    }

    /// The version that introduced it.
    pub const fn since(mut self, since: &'static str) -> Spec {
        self.since = since;
        self
    }

    /// Its time complexity.
    pub const fn complexity(mut self, complexity: &'static str) -> Spec {
        self.complexity = complexity;
        self
    }

    /// Inline and called `name`, the rest of the line from argument
    /// `index` is one argument.
    pub const fn inline_rest(mut self, index: usize, name: &'static str) -> Spec {
        self.inline_rest = Some((index, name));
        self
    }

    /// Where the rest of an inline line is one argument, when the command is
    /// called `called`.
    pub fn inline_rest_for(&self, called: &str) -> Option<usize> {
        self.inline_rest
            .and_then(|(i, name)| (name == called).then_some(i))
    }

    /// How the proxy may cache it.
    pub const fn cache(mut self, cache: Cache) -> Spec {
        self.cache = cache;
        self
    }

    /// How its RESP reply reads back inline.
    pub const fn shape(mut self, shape: Shape) -> Spec {
        self.shape = shape;
        self
    }

    /// Whether `argc` arguments (name included) fit the arity.
    pub fn arity_allows(&self, argc: usize) -> bool {
        let argc = argc as i64;
        let arity = i64::from(self.arity);
        if arity >= 0 {
            argc == arity
        } else {
            argc >= -arity
        }
    }

    /// The index of its first operand: 1, or 2 for a subcommand.
    pub fn first_operand(&self) -> usize {
        if self.bar < self.name.len() {
            2
        } else {
            1
        }
    }

    /// The container's name for a subcommand (`config` for `config|get`).
    pub fn container(&self) -> Option<&'static str> {
        (self.bar < self.name.len()).then(|| &self.name[..self.bar])
    }

    /// The name a subcommand is called by after its container (`get`).
    pub fn short_name(&self) -> &'static str {
        self.name.get(self.bar + 1..).unwrap_or(self.name)
    }

    /// Whether the command reads or writes the keyspace (the server runs it,
    /// the proxy forwards it).
    pub fn is_data(&self) -> bool {
        matches!(self.handler, Handler::Data(_))
    }
}

/// Where the `|` of a subcommand's full name (`container|sub`) is, or the
/// name's length if it has none.
const fn bar_at(name: &str) -> usize {
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'|' {
            return i;
        }
        i += 1;
    }
    b.len()
}

/// The commands of every family, in the order `COMMAND` lists them.
fn families() -> [&'static [Spec]; 6] {
    [
        crate::families::string::COMMANDS,
        crate::families::keyspace::COMMANDS,
        crate::families::transaction::COMMANDS,
        crate::families::connection::COMMANDS,
        crate::families::server::COMMANDS,
        crate::families::pubsub::COMMANDS,
    ]
}

/// The registered commands, and an index of their names and aliases.
#[derive(Debug)]
pub struct Table {
    commands: Vec<&'static Spec>,
    /// Every name and alias of up to 16 bytes, by length, each packed into
    /// an integer ([`pack`]): the lookup of a request is a few integer
    /// compares among the names of its length.
    by_len: [Vec<(u128, &'static str, &'static Spec)>; 17],
    /// Longer names (Redis has a few), compared as they are.
    long: Vec<(&'static str, &'static Spec)>,
}

impl Table {
    /// The table of every family's commands, built on first use.
    pub fn get() -> &'static Table {
        static TABLE: OnceLock<Table> = OnceLock::new();
        TABLE.get_or_init(|| Table::build(&families()))
    }

    fn build(families: &[&'static [Spec]]) -> Table {
        let commands: Vec<&'static Spec> = families.iter().flat_map(|f| f.iter()).collect();
        let mut by_len: [Vec<(u128, &'static str, &'static Spec)>; 17] = Default::default();
        let mut long = Vec::new();
        for &s in &commands {
            for n in std::iter::once(s.name).chain(s.aliases.iter().copied()) {
                match by_len.get_mut(n.len()) {
                    Some(bucket) => bucket.push((pack(n.as_bytes()), n, s)),
                    None => long.push((n, s)),
                }
            }
        }
        Table {
            commands,
            by_len,
            long,
        }
    }

    /// Every top-level command, in family order.
    pub fn commands(&self) -> &[&'static Spec] {
        &self.commands
    }

    /// The command called `name` (any case), with the name it was found
    /// under (an alias, if it was one).
    #[inline]
    pub fn lookup(&self, name: &[u8]) -> Option<(&'static str, &'static Spec)> {
        if let Some(bucket) = self.by_len.get(name.len()) {
            let key = pack(name);
            return bucket
                .iter()
                .find(|(k, _, _)| *k == key)
                .map(|&(_, n, s)| (n, s));
        }
        self.long
            .iter()
            .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
            .copied()
    }
}

/// A name of up to 16 bytes, lower-cased and packed into one integer; names
/// of one length pack alike only if they are equal but for case. Bytes are
/// gathered one by one (a call to `memcpy` would cost more for names this
/// short) and lower-cased eight at a time: this runs for every request.
#[inline]
fn pack(name: &[u8]) -> u128 {
    let (mut lo, mut hi) = (0u64, 0u64);
    for (i, &b) in name.iter().take(16).enumerate() {
        if i < 8 {
            lo |= u64::from(b) << (8 * i);
        } else {
            hi |= u64::from(b) << (8 * (i - 8));
        }
    }
    u128::from(ascii_lower(lo)) | u128::from(ascii_lower(hi)) << 64
}

/// Lower-cases the ASCII capitals among eight bytes; other bytes are left
/// alone.
#[inline]
fn ascii_lower(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let low7 = x & (0x7f * ONES);
    // Per byte, the top bit is set where low7 >= 'A', resp. > 'Z'.
    let ge_a = low7 + (0x80 - u64::from(b'A')) * ONES;
    let gt_z = low7 + (0x80 - u64::from(b'Z') - 1) * ONES;
    let upper = (ge_a ^ gt_z) & !x & (0x80 * ONES);
    x | (upper >> 2)
}

/// Finds the subcommand called `name` (any case) of a container.
pub fn lookup_sub(subs: &'static [Spec], name: &[u8]) -> Option<&'static Spec> {
    subs.iter()
        .find(|s| s.short_name().as_bytes().eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_positions_follow_first_last_step() {
        let one = Keys::one(1, KeyAccess::Read);
        assert_eq!(one.positions(2).collect::<Vec<_>>(), [1]);
        let all = Keys::range(1, -1, 1, KeyAccess::Remove);
        assert_eq!(all.positions(4).collect::<Vec<_>>(), [1, 2, 3]);
        let pairs = Keys::range(1, -1, 2, KeyAccess::Overwrite);
        assert_eq!(pairs.positions(5).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(Keys::NONE.positions(3).count(), 0);
        // Too few arguments for the range: no key past the end.
        assert_eq!(one.positions(1).count(), 0);
    }

    #[test]
    fn lookup_is_case_insensitive_and_knows_aliases() {
        let t = Table::get();
        let (name, spec) = t.lookup(b"GeT").unwrap();
        assert_eq!((name, spec.name), ("get", "get"));
        let (name, spec) = t.lookup(b"PUT").unwrap();
        assert_eq!((name, spec.name), ("put", "set"));
        assert!(t.lookup(b"frob").is_none());
        assert!(t.lookup(&[b'g'; 100]).is_none());
        // Names of different lengths never match: trailing zero bytes do not.
        assert!(t.lookup(b"get\0").is_none());
        assert!(t.lookup(b"").is_none());
        assert!(t.lookup(b"Ge\xd4").is_none(), "only ASCII folds");
    }

    #[test]
    fn ascii_lowering_folds_capitals_only() {
        let all: Vec<u8> = (0..=255u8).collect();
        for chunk in all.chunks(8) {
            let x = u64::from_le_bytes(chunk.try_into().unwrap());
            let want: Vec<u8> = chunk.iter().map(u8::to_ascii_lowercase).collect();
            assert_eq!(ascii_lower(x).to_le_bytes().to_vec(), want);
        }
    }
}
