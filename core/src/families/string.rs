//! The string family, with Redis's semantics and error texts: GET, SET and
//! its options (the seed's PUT is an alias of SET), the GET-and-set
//! variants, the multi-key MGET/MSET/MSETNX, ranges, counters and bits.

use super::parse::{self, Expiry, TimeArg, MAX_STRING};
use crate::command::table::{Arg, Cache, Flags, Group, Handler, KeyAccess, Keys, Spec};
use crate::command::Command;
use crate::db::{Db, Effect};
use crate::errors::ExecError;
use crate::reply::{Reply, ReplyOut};
use bytes::{Bytes, BytesMut};

/// The family's commands.
pub const COMMANDS: &[Spec] = &[
    GET,
    SET,
    SETNX,
    SETEX,
    PSETEX,
    GETSET,
    GETDEL,
    GETEX,
    MGET,
    MSET,
    MSETNX,
    APPEND,
    STRLEN,
    GETRANGE,
    SUBSTR,
    SETRANGE,
    INCR,
    DECR,
    INCRBY,
    DECRBY,
    INCRBYFLOAT,
    SETBIT,
    GETBIT,
    LCS,
];

const READ_FAST: Flags = Flags::READONLY.union(Flags::FAST);
const WRITE: Flags = Flags::WRITE.union(Flags::DENYOOM);
const WRITE_FAST: Flags = WRITE.union(Flags::FAST);
const KEY_ARG: &[Arg] = &[Arg::key("key")];
const BY_ARGS: &[Arg] = &[Arg::key("key"), Arg::integer("increment")];

fn error(e: ExecError) -> Reply {
    e.into()
}

fn bulk(v: &[u8]) -> Reply {
    Reply::Bulk(Bytes::copy_from_slice(v))
}

fn value_reply(v: Option<&[u8]>) -> Reply {
    v.map_or(Reply::Nil, bulk)
}

const GET: Spec = Spec::new(
    "get",
    2,
    READ_FAST,
    Group::String,
    "Returns the value of a key, or nil if it is missing.",
    Handler::Data(get),
)
.keys(Keys::one(1, KeyAccess::Read))
.args(KEY_ARG)
.cache(Cache::Value);

fn get(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    out.value(db.get(cmd.arg(1)));
}

const SET: Spec = Spec::new(
    "set",
    -3,
    WRITE,
    Group::String,
    "Stores a value under a key, with options (inline PUT: the rest of the line is the value).",
    Handler::Data(set),
)
.aliases(&["put"])
.keys(Keys::one(1, KeyAccess::Overwrite))
.args(&[
    Arg::key("key"),
    Arg::string("value"),
    Arg::oneof(
        "condition",
        &[Arg::token("nx", "NX"), Arg::token("xx", "XX")],
    )
    .optional(),
    Arg::token("get", "GET").optional(),
    Arg::oneof(
        "expiration",
        &[
            Arg::integer("seconds").with_token("EX"),
            Arg::integer("milliseconds").with_token("PX"),
            Arg::integer("unix-time-seconds").with_token("EXAT"),
            Arg::integer("unix-time-milliseconds").with_token("PXAT"),
            Arg::token("keepttl", "KEEPTTL"),
        ],
    )
    .optional(),
])
.inline_rest(2, "put")
.cache(Cache::WriteThrough(set_effects));

/// `SET`'s options, parsed.
struct SetOptions {
    nx: bool,
    xx: bool,
    get: bool,
    expiry: Expiry,
}

fn set_options(args: &[Bytes], now: u64, command: &'static str) -> Result<SetOptions, ExecError> {
    let mut o = SetOptions {
        nx: false,
        xx: false,
        get: false,
        expiry: Expiry::None,
    };
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a.eq_ignore_ascii_case(b"nx") && !o.xx {
            o.nx = true;
        } else if a.eq_ignore_ascii_case(b"xx") && !o.nx {
            o.xx = true;
        } else if a.eq_ignore_ascii_case(b"get") {
            o.get = true;
        } else if a.eq_ignore_ascii_case(b"keepttl") && o.expiry == Expiry::None {
            o.expiry = Expiry::Keep;
        } else if let (Some(unit), Some(v), Expiry::None) =
            (TimeArg::from_option(a), args.get(i + 1), o.expiry)
        {
            o.expiry = Expiry::At(unit.deadline(v, now, true, command)?);
            i += 1;
        } else {
            return Err(ExecError::Syntax);
        }
        i += 1;
    }
    Ok(o)
}

fn set(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let (key, value) = (cmd.arg(1), cmd.arg(2));
    if cmd.args().len() == 3 {
        db.set(key, value, None);
        return out.reply(Reply::ok());
    }
    let o = match set_options(&cmd.args()[3..], db.now(), "set") {
        Ok(o) => o,
        Err(e) => return out.reply(error(e)),
    };
    // The old value is copied only when GET asks for it.
    let (exists, kept, previous) = match db.slot(key) {
        None => (false, None, Reply::Nil),
        Some(s) if o.get => (true, s.deadline, bulk(s.entry.value())),
        Some(s) => (true, s.deadline, Reply::Nil),
    };
    if (o.nx && exists) || (o.xx && !exists) {
        return out.reply(previous);
    }
    store(db, key, value, o.expiry, kept);
    out.reply(if o.get { previous } else { Reply::ok() });
}

/// Writes `value` with its expiry; `kept` is the deadline the key had.
fn store(db: &mut Db, key: &Bytes, value: &Bytes, expiry: Expiry, kept: Option<u64>) {
    match expiry {
        Expiry::None | Expiry::Persist => db.set(key, value, None),
        Expiry::Keep => db.set(key, value, kept),
        // A deadline already past leaves the key missing (Db::set), as in
        // Redis.
        Expiry::At(at) => db.set(key, value, Some(u64::try_from(at).unwrap_or(0))),
    }
}

/// An acknowledged plain `SET` stored its value with no deadline; with
/// options, the proxy cannot tell from the reply what happened, so the key
/// is only dropped from its cache.
fn set_effects(cmd: &Command, reply: &Reply, effects: &mut Vec<Effect>) {
    if cmd.args().len() == 3 && matches!(reply, Reply::Status(_)) {
        effects.push(Effect::Set {
            key: cmd.arg(1).clone(),
            value: cmd.arg(2).clone(),
            deadline: None,
        });
    }
}

const SETNX: Spec = Spec::new(
    "setnx",
    3,
    WRITE_FAST,
    Group::String,
    "Sets a key only if it does not exist; 1 if it was set.",
    Handler::Data(setnx),
)
.keys(Keys::one(1, KeyAccess::Overwrite))
.args(&[Arg::key("key"), Arg::string("value")]);

fn setnx(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    if db.contains(cmd.arg(1)) {
        return out.reply(Reply::Integer(0));
    }
    db.set(cmd.arg(1), cmd.arg(2), None);
    out.reply(Reply::Integer(1));
}

const SETEX: Spec = Spec::new(
    "setex",
    4,
    WRITE,
    Group::String,
    "Sets a key with a time to live in seconds.",
    Handler::Data(setex),
)
.keys(Keys::one(1, KeyAccess::Overwrite))
.args(&[
    Arg::key("key"),
    Arg::integer("seconds"),
    Arg::string("value"),
])
.since("2.0.0");

fn setex(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    set_with_ttl(db, cmd, TimeArg::Secs, "setex", out);
}

const PSETEX: Spec = Spec::new(
    "psetex",
    4,
    WRITE,
    Group::String,
    "Sets a key with a time to live in milliseconds.",
    Handler::Data(psetex),
)
.keys(Keys::one(1, KeyAccess::Overwrite))
.args(&[
    Arg::key("key"),
    Arg::integer("milliseconds"),
    Arg::string("value"),
])
.since("2.6.0");

fn psetex(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    set_with_ttl(db, cmd, TimeArg::Millis, "psetex", out);
}

fn set_with_ttl(
    db: &mut Db,
    cmd: &Command,
    unit: TimeArg,
    name: &'static str,
    out: &mut dyn ReplyOut,
) {
    match unit.deadline(cmd.arg(2), db.now(), true, name) {
        Ok(at) => {
            store(db, cmd.arg(1), cmd.arg(3), Expiry::At(at), None);
            out.reply(Reply::ok());
        }
        Err(e) => out.reply(error(e)),
    }
}

const GETSET: Spec = Spec::new(
    "getset",
    3,
    WRITE_FAST,
    Group::String,
    "Sets a key and returns the value it had.",
    Handler::Data(getset),
)
.keys(Keys::one(1, KeyAccess::Overwrite))
.args(&[Arg::key("key"), Arg::string("value")]);

fn getset(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let old = value_reply(db.get(cmd.arg(1)));
    db.set(cmd.arg(1), cmd.arg(2), None);
    out.reply(old);
}

const GETDEL: Spec = Spec::new(
    "getdel",
    2,
    Flags::WRITE.union(Flags::FAST),
    Group::String,
    "Returns the value of a key and deletes it.",
    Handler::Data(getdel),
)
.keys(Keys::one(1, KeyAccess::Remove))
.args(KEY_ARG)
.since("6.2.0");

fn getdel(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let old = value_reply(db.get(cmd.arg(1)));
    db.del(cmd.arg(1));
    out.reply(old);
}

const GETEX: Spec = Spec::new(
    "getex",
    -2,
    Flags::WRITE.union(Flags::FAST),
    Group::String,
    "Returns the value of a key and sets or clears its time to live.",
    Handler::Data(getex),
)
.keys(Keys::one(1, KeyAccess::Overwrite))
.args(&[
    Arg::key("key"),
    Arg::oneof(
        "expiration",
        &[
            Arg::integer("seconds").with_token("EX"),
            Arg::integer("milliseconds").with_token("PX"),
            Arg::integer("unix-time-seconds").with_token("EXAT"),
            Arg::integer("unix-time-milliseconds").with_token("PXAT"),
            Arg::token("persist", "PERSIST"),
        ],
    )
    .optional(),
])
.since("6.2.0");

fn getex(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let opts = &cmd.args()[2..];
    let expiry = match opts {
        [] => None,
        [p] if p.eq_ignore_ascii_case(b"persist") => Some(Expiry::Persist),
        [unit, v] => match TimeArg::from_option(unit) {
            Some(unit) => match unit.deadline(v, db.now(), true, "getex") {
                Ok(at) => Some(Expiry::At(at)),
                Err(e) => return out.reply(error(e)),
            },
            None => return out.reply(error(ExecError::Syntax)),
        },
        _ => return out.reply(error(ExecError::Syntax)),
    };
    let key = cmd.arg(1);
    let Some(value) = db.get(key).map(Bytes::copy_from_slice) else {
        return out.reply(Reply::Nil);
    };
    match expiry {
        Some(Expiry::Persist) if db.deadline(key).flatten().is_some() => {
            db.expire(key, None);
        }
        Some(Expiry::At(at)) => {
            let at = u64::try_from(at).unwrap_or(0);
            db.expire(key, Some(at));
        }
        _ => {}
    }
    out.reply(Reply::Bulk(value));
}

const MGET: Spec = Spec::new(
    "mget",
    -2,
    READ_FAST,
    Group::String,
    "Returns the values of the keys (nil for each missing one).",
    Handler::Data(mget),
)
.keys(Keys::range(1, -1, 1, KeyAccess::Read))
.args(&[Arg::key("key").multiple()])
.complexity("O(N) where N is the number of keys to retrieve.")
.cache(Cache::Values);

fn mget(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let values = cmd.args()[1..]
        .iter()
        .map(|k| value_reply(db.get(k)))
        .collect();
    out.reply(Reply::Array(values));
}

const MSET: Spec = Spec::new(
    "mset",
    -3,
    WRITE,
    Group::String,
    "Sets several keys at once.",
    Handler::Data(mset),
)
.keys(Keys::range(1, -1, 2, KeyAccess::Overwrite))
.args(&[Arg::block("data", &[Arg::key("key"), Arg::string("value")]).multiple()])
.complexity("O(N) where N is the number of keys to set.")
.cache(Cache::WriteThrough(mset_effects));

fn pairs_ok(cmd: &Command, name: &'static str, out: &mut dyn ReplyOut) -> bool {
    if cmd.args().len() % 2 == 0 {
        out.reply(crate::errors::CommandError::WrongArity { command: name }.into());
        return false;
    }
    true
}

fn mset(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    if !pairs_ok(cmd, "mset", out) {
        return;
    }
    for pair in cmd.args()[1..].chunks_exact(2) {
        db.set(&pair[0], &pair[1], None);
    }
    out.reply(Reply::ok());
}

/// An acknowledged MSET stored every pair (a key named twice ends with its
/// last value, as the pairs are applied in order).
fn mset_effects(cmd: &Command, reply: &Reply, effects: &mut Vec<Effect>) {
    if matches!(reply, Reply::Status(_)) && cmd.args().len() % 2 == 1 {
        effects.extend(cmd.args()[1..].chunks_exact(2).map(|p| Effect::Set {
            key: p[0].clone(),
            value: p[1].clone(),
            deadline: None,
        }));
    }
}

const MSETNX: Spec = Spec::new(
    "msetnx",
    -3,
    WRITE,
    Group::String,
    "Sets several keys, only if none of them exists; 1 if they were set.",
    Handler::Data(msetnx),
)
.keys(Keys::range(1, -1, 2, KeyAccess::Overwrite))
.args(&[Arg::block("data", &[Arg::key("key"), Arg::string("value")]).multiple()])
.complexity("O(N) where N is the number of keys to set.");

fn msetnx(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    if !pairs_ok(cmd, "msetnx", out) {
        return;
    }
    let pairs = cmd.args()[1..].chunks_exact(2);
    if pairs.clone().any(|p| db.contains(&p[0])) {
        return out.reply(Reply::Integer(0));
    }
    for p in pairs {
        db.set(&p[0], &p[1], None);
    }
    out.reply(Reply::Integer(1));
}

const APPEND: Spec = Spec::new(
    "append",
    3,
    WRITE_FAST,
    Group::String,
    "Appends to a key's value; the new length.",
    Handler::Data(append),
)
.keys(Keys::one(1, KeyAccess::Overwrite))
.args(&[Arg::key("key"), Arg::string("value")])
.since("2.0.0")
.notifies("append");

fn append(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let (key, tail) = (cmd.arg(1), cmd.arg(2));
    let Some(old) = db.get(key) else {
        db.set(key, tail, None);
        return out.reply(Reply::Integer(tail.len() as i64));
    };
    if old.len() + tail.len() > MAX_STRING {
        return out.reply(error(ExecError::StringTooLong));
    }
    let mut v = BytesMut::with_capacity(old.len() + tail.len());
    v.extend_from_slice(old);
    v.extend_from_slice(tail);
    let len = v.len();
    db.overwrite(key, &v.freeze());
    out.reply(Reply::Integer(len as i64));
}

const STRLEN: Spec = Spec::new(
    "strlen",
    2,
    READ_FAST,
    Group::String,
    "The length of a key's value (0 if missing).",
    Handler::Data(strlen),
)
.keys(Keys::one(1, KeyAccess::Read))
.args(KEY_ARG)
.since("2.2.0");

fn strlen(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    out.reply(Reply::Integer(
        db.get(cmd.arg(1)).map_or(0, <[u8]>::len) as i64
    ));
}

const GETRANGE: Spec = Spec::new(
    "getrange",
    4,
    Flags::READONLY,
    Group::String,
    "A substring of a key's value (negative offsets count from the end).",
    Handler::Data(getrange),
)
.keys(Keys::one(1, KeyAccess::Read))
.args(&[Arg::key("key"), Arg::integer("start"), Arg::integer("end")])
.since("2.4.0")
.complexity("O(N) where N is the length of the returned string.");

const SUBSTR: Spec = Spec::new(
    "substr",
    4,
    Flags::READONLY,
    Group::String,
    "The old name of GETRANGE.",
    Handler::Data(getrange),
)
.keys(Keys::one(1, KeyAccess::Read))
.args(&[Arg::key("key"), Arg::integer("start"), Arg::integer("end")]);

fn getrange(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let (Some(start), Some(end)) = (parse::int(cmd.arg(2)), parse::int(cmd.arg(3))) else {
        return out.reply(error(ExecError::NotInteger));
    };
    let v = db.get(cmd.arg(1)).unwrap_or_default();
    let len = v.len() as i64;
    // Redis's rules: both negative and start after end is empty; negative
    // offsets count from the end, clamped to the string.
    if start < 0 && end < 0 && start > end {
        return out.reply(Reply::Bulk(Bytes::new()));
    }
    let start = if start < 0 {
        (len + start).max(0)
    } else {
        start
    };
    let end = if end < 0 { (len + end).max(0) } else { end };
    let end = end.min(len - 1);
    if len == 0 || start > end {
        return out.reply(Reply::Bulk(Bytes::new()));
    }
    out.reply(bulk(&v[start as usize..=end as usize]));
}

const SETRANGE: Spec = Spec::new(
    "setrange",
    4,
    WRITE,
    Group::String,
    "Overwrites part of a key's value from an offset; the new length.",
    Handler::Data(setrange),
)
.keys(Keys::one(1, KeyAccess::Overwrite))
.args(&[
    Arg::key("key"),
    Arg::integer("offset"),
    Arg::string("value"),
])
.since("2.2.0")
.notifies("setrange");

fn setrange(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let Some(offset) = parse::int(cmd.arg(2)) else {
        return out.reply(error(ExecError::NotInteger));
    };
    if offset < 0 {
        return out.reply(error(ExecError::OffsetOutOfRange));
    }
    let (key, part) = (cmd.arg(1), cmd.arg(3));
    let old = db.get(key);
    let old_len = old.map_or(0, <[u8]>::len);
    if part.is_empty() {
        // Nothing to write: the length as it is, and no key made.
        return out.reply(Reply::Integer(old_len as i64));
    }
    let offset = offset as usize;
    if offset.saturating_add(part.len()) > MAX_STRING {
        return out.reply(error(ExecError::StringTooLong));
    }
    let mut v = BytesMut::from(old.unwrap_or_default());
    if v.len() < offset + part.len() {
        v.resize(offset + part.len(), 0);
    }
    v[offset..offset + part.len()].copy_from_slice(part);
    let len = v.len();
    db.overwrite(key, &v.freeze());
    out.reply(Reply::Integer(len as i64));
}

const INCR: Spec = counter(
    "incr",
    2,
    "Adds 1 to a key's integer value; the new value.",
    incr,
)
.notifies("incrby");
const DECR: Spec = counter(
    "decr",
    2,
    "Subtracts 1 from a key's integer value; the new value.",
    decr,
)
.notifies("decrby");
const INCRBY: Spec = counter(
    "incrby",
    3,
    "Adds an integer to a key's integer value.",
    incrby,
)
.notifies("incrby");
const DECRBY: Spec = counter(
    "decrby",
    3,
    "Subtracts an integer from a key's integer value.",
    decrby,
)
.notifies("decrby");

const fn counter(
    name: &'static str,
    arity: i32,
    summary: &'static str,
    handler: crate::command::table::DataHandler,
) -> Spec {
    let args: &'static [Arg] = if arity == 3 { BY_ARGS } else { KEY_ARG };
    Spec::new(
        name,
        arity,
        WRITE_FAST,
        Group::String,
        summary,
        Handler::Data(handler),
    )
    .keys(Keys::one(1, KeyAccess::Overwrite))
    .args(args)
}

fn incr(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    add(db, cmd.arg(1), Some(1), out);
}

fn decr(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    add(db, cmd.arg(1), Some(-1), out);
}

fn incrby(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    add(db, cmd.arg(1), parse::int(cmd.arg(2)), out);
}

fn decrby(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    // Redis refuses to negate the smallest integer rather than overflow.
    let by = parse::int(cmd.arg(2)).map(|n| n.checked_neg().ok_or(()));
    match by {
        Some(Ok(n)) => add(db, cmd.arg(1), Some(n), out),
        Some(Err(())) => out.reply(error(ExecError::Overflow)),
        None => out.reply(error(ExecError::NotInteger)),
    }
}

fn add(db: &mut Db, key: &Bytes, by: Option<i64>, out: &mut dyn ReplyOut) {
    let Some(by) = by else {
        return out.reply(error(ExecError::NotInteger));
    };
    // One lookup for the read and the write: this is a hot command.
    let at = db.find(key);
    let current = match at {
        None => 0,
        Some(i) => match parse::int(db.value_at(i)) {
            Some(n) => n,
            None => return out.reply(error(ExecError::NotInteger)),
        },
    };
    let Some(next) = current.checked_add(by) else {
        return out.reply(error(ExecError::Overflow));
    };
    let mut buf = itoa::Buffer::new();
    let text = buf.format(next).as_bytes();
    match at {
        Some(i) => db.overwrite_at(i, key, text),
        None => db.set(key, &Bytes::copy_from_slice(text), None),
    }
    out.reply(Reply::Integer(next));
}

const INCRBYFLOAT: Spec = Spec::new(
    "incrbyfloat",
    3,
    WRITE_FAST,
    Group::String,
    "Adds a float to a key's numeric value; the new value.",
    Handler::Data(incrbyfloat),
)
.keys(Keys::one(1, KeyAccess::Overwrite))
.args(&[Arg::key("key"), Arg::string("increment")])
.since("2.6.0")
.notifies("incrbyfloat");

fn incrbyfloat(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let key = cmd.arg(1);
    let current = match db.get(key) {
        None => 0.0,
        Some(v) => match parse::float(v) {
            Some(n) => n,
            None => return out.reply(error(ExecError::NotFloat)),
        },
    };
    let Some(by) = parse::float(cmd.arg(2)) else {
        return out.reply(error(ExecError::NotFloat));
    };
    let next = current + by;
    if !next.is_finite() {
        return out.reply(error(ExecError::NanOrInfinity));
    }
    let text = Bytes::from(parse::format_float(next));
    db.overwrite(key, &text);
    out.reply(Reply::Bulk(text));
}

const SETBIT: Spec = Spec::new(
    "setbit",
    4,
    WRITE,
    Group::String,
    "Sets or clears one bit of a key's value; the bit it had.",
    Handler::Data(setbit),
)
.keys(Keys::one(1, KeyAccess::Overwrite))
.args(&[
    Arg::key("key"),
    Arg::integer("offset"),
    Arg::integer("value"),
])
.since("2.2.0")
.notifies("setbit");

/// A bit offset as Redis reads it: up to 2^32 - 1 (512 MB of bits).
fn bit_offset(arg: &[u8]) -> Result<usize, ExecError> {
    parse::int(arg)
        .filter(|&n| (0..(MAX_STRING as i64) * 8).contains(&n))
        .map(|n| n as usize)
        .ok_or(ExecError::BitOffset)
}

fn setbit(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let offset = match bit_offset(cmd.arg(2)) {
        Ok(o) => o,
        Err(e) => return out.reply(error(e)),
    };
    let on = match &cmd.arg(3)[..] {
        b"1" => true,
        b"0" => false,
        _ => return out.reply(error(ExecError::BitValue)),
    };
    let key = cmd.arg(1);
    let mut v = BytesMut::from(db.get(key).unwrap_or_default());
    let byte = offset / 8;
    if v.len() <= byte {
        v.resize(byte + 1, 0);
    }
    let mask = 0x80u8 >> (offset % 8);
    let was = v[byte] & mask != 0;
    if on {
        v[byte] |= mask;
    } else {
        v[byte] &= !mask;
    }
    db.overwrite(key, &v.freeze());
    out.reply(Reply::Integer(i64::from(was)));
}

const GETBIT: Spec = Spec::new(
    "getbit",
    3,
    READ_FAST,
    Group::String,
    "One bit of a key's value.",
    Handler::Data(getbit),
)
.keys(Keys::one(1, KeyAccess::Read))
.args(&[Arg::key("key"), Arg::integer("offset")])
.since("2.2.0");

fn getbit(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let offset = match bit_offset(cmd.arg(2)) {
        Ok(o) => o,
        Err(e) => return out.reply(error(e)),
    };
    let v = db.get(cmd.arg(1)).unwrap_or_default();
    let bit = v
        .get(offset / 8)
        .is_some_and(|b| b & (0x80 >> (offset % 8)) != 0);
    out.reply(Reply::Integer(i64::from(bit)));
}

const LCS: Spec = Spec::new(
    "lcs",
    -3,
    Flags::READONLY,
    Group::String,
    "The longest common subsequence of two keys' values (LEN, IDX, MINMATCHLEN, WITHMATCHLEN).",
    Handler::Data(lcs),
)
.keys(Keys::range(1, 2, 1, KeyAccess::Read))
.args(&[
    Arg::key("key1"),
    Arg::key("key2"),
    Arg::token("len", "LEN").optional(),
    Arg::token("idx", "IDX").optional(),
    Arg::integer("min-match-len")
        .with_token("MINMATCHLEN")
        .optional(),
    Arg::token("withmatchlen", "WITHMATCHLEN").optional(),
])
.since("7.0.0")
.complexity("O(N*M) where N and M are the lengths of s1 and s2, respectively");

/// The largest `len(a) * len(b)` LCS works on: its table is that many
/// 32-bit cells.
const LCS_MAX_CELLS: usize = 64 * 1024 * 1024;

fn lcs(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let (mut want_len, mut idx, mut with_len, mut min_len) = (false, false, false, 0i64);
    let mut i = 3;
    let args = cmd.args();
    while i < args.len() {
        let a = &args[i];
        if a.eq_ignore_ascii_case(b"len") {
            want_len = true;
        } else if a.eq_ignore_ascii_case(b"idx") {
            idx = true;
        } else if a.eq_ignore_ascii_case(b"withmatchlen") {
            with_len = true;
        } else if a.eq_ignore_ascii_case(b"minmatchlen") && i + 1 < args.len() {
            match parse::int(&args[i + 1]) {
                Some(n) => min_len = n.max(0),
                None => return out.reply(error(ExecError::NotInteger)),
            }
            i += 1;
        } else {
            return out.reply(error(ExecError::Syntax));
        }
        i += 1;
    }
    if want_len && idx {
        return out.reply(Reply::error(
            "ERR If you want both the length and indexes, please just use IDX.",
        ));
    }
    let a = db
        .get(cmd.arg(1))
        .map(Bytes::copy_from_slice)
        .unwrap_or_default();
    let b = db
        .get(cmd.arg(2))
        .map(Bytes::copy_from_slice)
        .unwrap_or_default();
    if a.len().saturating_mul(b.len()) > LCS_MAX_CELLS {
        return out.reply(Reply::error(
            "ERR Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len",
        ));
    }
    // table[i][j]: LCS length of a[..i] and b[..j].
    let w = b.len() + 1;
    let mut t = vec![0u32; (a.len() + 1) * w];
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            t[i * w + j] = if a[i - 1] == b[j - 1] {
                t[(i - 1) * w + j - 1] + 1
            } else {
                t[(i - 1) * w + j].max(t[i * w + j - 1])
            };
        }
    }
    let total = t[a.len() * w + b.len()];
    if want_len {
        return out.reply(Reply::Integer(i64::from(total)));
    }
    // Walk back from the end, collecting the sequence and its matched
    // ranges (latest first, as Redis lists them).
    let (mut i, mut j) = (a.len(), b.len());
    let mut seq = Vec::with_capacity(total as usize);
    let mut matches: Vec<Reply> = Vec::new();
    let mut run: Option<(usize, usize, usize, usize)> = None; // a range, b range
    let flush = |run: &mut Option<(usize, usize, usize, usize)>, matches: &mut Vec<Reply>| {
        if let Some((a0, a1, b0, b1)) = run.take() {
            let len = a1 - a0 + 1;
            if len as i64 >= min_len {
                let range = |x: usize, y: usize| {
                    Reply::Array(vec![Reply::Integer(x as i64), Reply::Integer(y as i64)])
                };
                let mut m = vec![range(a0, a1), range(b0, b1)];
                if with_len {
                    m.push(Reply::Integer(len as i64));
                }
                matches.push(Reply::Array(m));
            }
        }
    };
    while i > 0 && j > 0 {
        if a[i - 1] == b[j - 1] {
            seq.push(a[i - 1]);
            let (ai, bj) = (i - 1, j - 1);
            run = match run {
                Some((a0, a1, b0, b1)) if a0 == ai + 1 && b0 == bj + 1 => Some((ai, a1, bj, b1)),
                other => {
                    let mut r = other;
                    flush(&mut r, &mut matches);
                    Some((ai, ai, bj, bj))
                }
            };
            i -= 1;
            j -= 1;
        } else if t[(i - 1) * w + j] > t[i * w + j - 1] {
            i -= 1;
        } else {
            j -= 1;
        }
    }
    flush(&mut run, &mut matches);
    if idx {
        return out.reply(Reply::Array(vec![
            Reply::Bulk(Bytes::from_static(b"matches")),
            Reply::Array(matches),
            Reply::Bulk(Bytes::from_static(b"len")),
            Reply::Integer(i64::from(total)),
        ]));
    }
    seq.reverse();
    out.reply(Reply::Bulk(Bytes::from(seq)));
}
