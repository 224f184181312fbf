//! The keyspace family: DEL, UNLINK, EXISTS, TOUCH, TYPE, RENAME(NX), COPY,
//! KEYS, SCAN, RANDOMKEY, DBSIZE, FLUSHDB, FLUSHALL, the EXPIRE family,
//! PERSIST, TTL and friends, OBJECT, TIME, and the seed's DUMP (every
//! pair).

use super::parse::{self, TimeArg};
use crate::command::table::{Arg, Cache, Flags, Group, Handler, KeyAccess, Keys, Shape, Spec};
use crate::command::Command;
use crate::db::{AccessMode, Db, Effect};
use crate::errors::ExecError;
use crate::glob;
use crate::reply::{Reply, ReplyOut};
use bytes::Bytes;

/// The family's commands.
pub const COMMANDS: &[Spec] = &[
    DEL,
    UNLINK,
    EXISTS,
    TOUCH,
    TYPE,
    RENAME,
    RENAMENX,
    COPY,
    KEYS,
    SCAN,
    RANDOMKEY,
    DBSIZE,
    FLUSHDB,
    FLUSHALL,
    EXPIRE,
    PEXPIRE,
    EXPIREAT,
    PEXPIREAT,
    PERSIST,
    TTL,
    PTTL,
    EXPIRETIME,
    PEXPIRETIME,
    OBJECT,
    TIME,
    DUMP,
];

const READ_FAST: Flags = Flags::READONLY.union(Flags::FAST);
const KEY_ARG: &[Arg] = &[Arg::key("key")];
const KEYS_ARG: &[Arg] = &[Arg::key("key").multiple()];

fn error(e: ExecError) -> Reply {
    e.into()
}

fn status(s: &'static str) -> Reply {
    Reply::Status(Bytes::from_static(s.as_bytes()))
}

const DEL: Spec = Spec::new(
    "del",
    -2,
    Flags::WRITE,
    Group::Generic,
    "Removes keys; replies with how many existed.",
    Handler::Data(del),
)
.keys(Keys::range(1, -1, 1, KeyAccess::Remove))
.args(KEYS_ARG)
.complexity("O(N) where N is the number of keys that will be removed.")
.cache(Cache::WriteThrough(del_effects));

const UNLINK: Spec = Spec::new(
    "unlink",
    -2,
    Flags::WRITE.union(Flags::FAST),
    Group::Generic,
    "Removes keys (as DEL: kv frees memory at once); how many existed.",
    Handler::Data(del),
)
.keys(Keys::range(1, -1, 1, KeyAccess::Remove))
.args(KEYS_ARG)
.since("4.0.0")
.cache(Cache::WriteThrough(del_effects));

fn del(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let removed = cmd.keys().filter(|k| db.del(k)).count();
    out.reply(Reply::Integer(removed as i64));
}

/// An acknowledged DEL leaves every key it named missing.
fn del_effects(cmd: &Command, reply: &Reply, effects: &mut Vec<Effect>) {
    if matches!(reply, Reply::Integer(_)) {
        effects.extend(cmd.keys().map(|k| Effect::Del { key: k.clone() }));
    }
}

const EXISTS: Spec = Spec::new(
    "exists",
    -2,
    READ_FAST,
    Group::Generic,
    "Counts the keys that exist (a key named twice counts twice).",
    Handler::Data(exists),
)
.keys(Keys::range(1, -1, 1, KeyAccess::Read))
.args(KEYS_ARG)
.since("3.0.3")
.complexity("O(N) where N is the number of keys to check.");

const TOUCH: Spec = Spec::new(
    "touch",
    -2,
    READ_FAST,
    Group::Generic,
    "Counts the keys that exist, counting as an access to each (LRU, LFU).",
    Handler::Data(touch),
)
.keys(Keys::range(1, -1, 1, KeyAccess::Read))
.args(KEYS_ARG)
.since("3.2.1");

fn exists(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let found = cmd.keys().filter(|k| db.contains(k)).count();
    out.reply(Reply::Integer(found as i64));
}

fn touch(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let found = cmd.keys().filter(|k| db.touch_key(k)).count();
    out.reply(Reply::Integer(found as i64));
}

const TYPE: Spec = Spec::new(
    "type",
    2,
    READ_FAST,
    Group::Generic,
    "The type of a key's value: string, or none.",
    Handler::Data(type_of),
)
.keys(Keys::one(1, KeyAccess::Read))
.args(KEY_ARG);

fn type_of(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    out.reply(status(if db.contains(cmd.arg(1)) {
        "string"
    } else {
        "none"
    }));
}

const RENAME: Spec = Spec::new(
    "rename",
    3,
    Flags::WRITE,
    Group::Generic,
    "Renames a key (with its time to live), replacing the new name's value.",
    Handler::Data(rename),
)
.keys(Keys::range(1, 2, 1, KeyAccess::Overwrite))
.args(&[Arg::key("key"), Arg::key("newkey")])
.notifies("rename_to");

const RENAMENX: Spec = Spec::new(
    "renamenx",
    3,
    Flags::WRITE.union(Flags::FAST),
    Group::Generic,
    "Renames a key only if the new name is free; 1 if renamed.",
    Handler::Data(renamenx),
)
.keys(Keys::range(1, 2, 1, KeyAccess::Overwrite))
.args(&[Arg::key("key"), Arg::key("newkey")])
.notifies("rename_to");

fn rename(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    match move_key(db, cmd.arg(1), cmd.arg(2), false) {
        Ok(_) => out.reply(Reply::ok()),
        Err(e) => out.reply(error(e)),
    }
}

fn renamenx(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    match move_key(db, cmd.arg(1), cmd.arg(2), true) {
        Ok(moved) => out.reply(Reply::Integer(i64::from(moved))),
        Err(e) => out.reply(error(e)),
    }
}

/// Moves `from` to `to` with its deadline; with `nx`, only if `to` is
/// free. Whether it moved.
fn move_key(db: &mut Db, from: &Bytes, to: &Bytes, nx: bool) -> Result<bool, ExecError> {
    let Some(slot) = db.slot(from) else {
        return Err(ExecError::NoSuchKey);
    };
    let (value, deadline) = (Bytes::copy_from_slice(slot.entry.value()), slot.deadline);
    if from == to {
        return Ok(!nx);
    }
    if nx && db.contains(to) {
        return Ok(false);
    }
    // Removed first: its keyspace events come in Redis's order,
    // `rename_from` then `rename_to`.
    db.del(from);
    db.set(to, &value, deadline);
    Ok(true)
}

const COPY: Spec = Spec::new(
    "copy",
    -3,
    Flags::WRITE.union(Flags::DENYOOM),
    Group::Generic,
    "Copies a key's value (and time to live) to another key (DB 0 only; REPLACE).",
    Handler::Data(copy),
)
.keys(Keys::range(1, 2, 1, KeyAccess::Overwrite))
.args(&[
    Arg::key("source"),
    Arg::key("destination"),
    Arg::integer("destination-db").with_token("DB").optional(),
    Arg::token("replace", "REPLACE").optional(),
])
.since("6.2.0")
.notifies("copy_to");

fn copy(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let args = cmd.args();
    let mut replace = false;
    let mut i = 3;
    while i < args.len() {
        if args[i].eq_ignore_ascii_case(b"replace") {
            replace = true;
        } else if args[i].eq_ignore_ascii_case(b"db") && i + 1 < args.len() {
            match parse::int(&args[i + 1]) {
                Some(0) => {}
                Some(_) => return out.reply(error(ExecError::DbIndexOutOfRange)),
                None => return out.reply(error(ExecError::NotInteger)),
            }
            i += 1;
        } else {
            return out.reply(error(ExecError::Syntax));
        }
        i += 1;
    }
    let (from, to) = (cmd.arg(1), cmd.arg(2));
    if from == to {
        return out.reply(Reply::error(
            "ERR source and destination objects are the same",
        ));
    }
    let Some(slot) = db.slot(from) else {
        return out.reply(Reply::Integer(0));
    };
    let (value, deadline) = (Bytes::copy_from_slice(slot.entry.value()), slot.deadline);
    if !replace && db.contains(to) {
        return out.reply(Reply::Integer(0));
    }
    db.set(to, &value, deadline);
    out.reply(Reply::Integer(1));
}

const KEYS: Spec = Spec::new(
    "keys",
    2,
    Flags::READONLY,
    Group::Generic,
    "Every key matching a glob pattern.",
    Handler::Data(keys),
)
.args(&[Arg::string("pattern")])
.complexity("O(N) with N being the number of keys in the database");

fn keys(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let pattern = cmd.arg(1);
    let now = db.now();
    let all = pattern.as_ref() == b"*";
    let found = db
        .store()
        .iter_slots()
        .filter(|s| !s.expired(now))
        .map(|s| s.entry.key())
        .filter(|k| all || glob::matches(pattern, k, false))
        .map(|k| Reply::Bulk(Bytes::copy_from_slice(k)))
        .collect();
    out.reply(Reply::Array(found));
}

const SCAN: Spec = Spec::new(
    "scan",
    -2,
    Flags::READONLY,
    Group::Generic,
    "Iterates over the keys with a cursor (MATCH, COUNT, TYPE).",
    Handler::Data(scan),
)
.args(&[
    Arg::integer("cursor"),
    Arg::string("pattern").with_token("MATCH").optional(),
    Arg::integer("count").with_token("COUNT").optional(),
    Arg::string("type").with_token("TYPE").optional(),
])
.since("2.8.0")
.complexity("O(1) for every call. O(N) for a complete iteration.");

/// `SCAN`: the cursor is a position in the store's slots, walked from the
/// end down (see [`Store`](crate::db::Store) for why that keeps Redis's
/// guarantee as the store grows and shrinks). Cursor 0 starts at the end;
/// a returned 0 means the walk is done.
fn scan(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let Some(cursor) = std::str::from_utf8(cmd.arg(1))
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return out.reply(error(ExecError::InvalidCursor));
    };
    let args = cmd.args();
    let (mut pattern, mut count, mut only_strings) = (None, 10usize, true);
    let mut i = 2;
    while i + 1 < args.len() + 1 {
        let (Some(opt), Some(v)) = (args.get(i), args.get(i + 1)) else {
            return out.reply(error(ExecError::Syntax));
        };
        if opt.eq_ignore_ascii_case(b"match") {
            pattern = Some(v.clone());
        } else if opt.eq_ignore_ascii_case(b"count") {
            match parse::int(v) {
                Some(n) if n >= 1 => count = n as usize,
                Some(_) => return out.reply(error(ExecError::Syntax)),
                None => return out.reply(error(ExecError::NotInteger)),
            }
        } else if opt.eq_ignore_ascii_case(b"type") {
            only_strings = v.eq_ignore_ascii_case(b"string");
        } else {
            return out.reply(error(ExecError::Syntax));
        }
        i += 2;
    }
    let len = db.store().len();
    let hi = if cursor == 0 {
        len
    } else {
        usize::try_from(cursor).unwrap_or(usize::MAX).min(len)
    };
    let lo = hi.saturating_sub(count);
    let mut found = Vec::new();
    for p in (lo..hi).rev() {
        if db.expire_position(p) {
            continue;
        }
        let Some(slot) = db.store().at(p) else {
            continue;
        };
        let key = slot.entry.key();
        if only_strings
            && pattern
                .as_ref()
                .is_none_or(|pat| glob::matches(pat, key, false))
        {
            found.push(Reply::Bulk(Bytes::copy_from_slice(key)));
        }
    }
    let next = Bytes::from(lo.to_string());
    out.reply(Reply::Array(vec![Reply::Bulk(next), Reply::Array(found)]));
}

const RANDOMKEY: Spec = Spec::new(
    "randomkey",
    1,
    Flags::READONLY,
    Group::Generic,
    "A random key, or nil if there are none.",
    Handler::Data(randomkey),
);

fn randomkey(db: &mut Db, _: &Command, out: &mut dyn ReplyOut) {
    // Expired keys found on the way are removed; a bounded number of
    // tries, then any key (as Redis does when all keys are volatile).
    for _ in 0..100 {
        let Some(p) = db.random_position() else {
            return out.reply(Reply::Nil);
        };
        if !db.expire_position(p) {
            let key = db
                .store()
                .at(p)
                .map(|s| Bytes::copy_from_slice(s.entry.key()));
            return out.reply(key.map_or(Reply::Nil, Reply::Bulk));
        }
    }
    out.reply(Reply::Nil);
}

const DBSIZE: Spec = Spec::new(
    "dbsize",
    1,
    READ_FAST,
    Group::Server,
    "How many keys there are.",
    Handler::Data(dbsize),
);

fn dbsize(db: &mut Db, _: &Command, out: &mut dyn ReplyOut) {
    out.reply(Reply::Integer(db.store().len() as i64));
}

const FLUSH_ARGS: &[Arg] = &[Arg::oneof(
    "flush-type",
    &[Arg::token("async", "ASYNC"), Arg::token("sync", "SYNC")],
)
.optional()];

const FLUSHDB: Spec = Spec::new(
    "flushdb",
    -1,
    Flags::WRITE,
    Group::Server,
    "Removes every key (ASYNC and SYNC alike: at once).",
    Handler::Data(flush),
)
.args(FLUSH_ARGS)
.cache(Cache::WriteThrough(flush_effects));

const FLUSHALL: Spec = Spec::new(
    "flushall",
    -1,
    Flags::WRITE,
    Group::Server,
    "Removes every key of every database (kv has one).",
    Handler::Data(flush),
)
.args(FLUSH_ARGS)
.cache(Cache::WriteThrough(flush_effects));

fn flush(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    match cmd.args() {
        [_] => {}
        [_, mode] if mode.eq_ignore_ascii_case(b"async") || mode.eq_ignore_ascii_case(b"sync") => {}
        _ => return out.reply(error(ExecError::Syntax)),
    }
    db.flush();
    out.reply(Reply::ok());
}

/// An acknowledged flush leaves nothing: the proxy's cache is emptied.
fn flush_effects(_: &Command, reply: &Reply, effects: &mut Vec<Effect>) {
    if matches!(reply, Reply::Status(_)) {
        effects.push(Effect::Flush);
    }
}

const EXPIRE_ARGS: &[Arg] = &[
    Arg::key("key"),
    Arg::integer("time"),
    Arg::oneof(
        "condition",
        &[
            Arg::token("nx", "NX"),
            Arg::token("xx", "XX"),
            Arg::token("gt", "GT"),
            Arg::token("lt", "LT"),
        ],
    )
    .optional(),
];

const fn expire_spec(
    name: &'static str,
    summary: &'static str,
    handler: crate::command::table::DataHandler,
) -> Spec {
    Spec::new(
        name,
        -3,
        Flags::WRITE.union(Flags::FAST),
        Group::Generic,
        summary,
        Handler::Data(handler),
    )
    .keys(Keys::one(1, KeyAccess::Overwrite))
    .args(EXPIRE_ARGS)
}

const EXPIRE: Spec = expire_spec("expire", "Sets a key's time to live in seconds.", expire);
const PEXPIRE: Spec = expire_spec(
    "pexpire",
    "Sets a key's time to live in milliseconds.",
    pexpire,
);
const EXPIREAT: Spec = expire_spec(
    "expireat",
    "Sets when a key expires, as a unix time in seconds.",
    expireat,
);
const PEXPIREAT: Spec = expire_spec(
    "pexpireat",
    "Sets when a key expires, as a unix time in milliseconds.",
    pexpireat,
);

fn expire(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    expire_generic(db, cmd, TimeArg::Secs, "expire", out);
}

fn pexpire(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    expire_generic(db, cmd, TimeArg::Millis, "pexpire", out);
}

fn expireat(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    expire_generic(db, cmd, TimeArg::UnixSecs, "expireat", out);
}

fn pexpireat(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    expire_generic(db, cmd, TimeArg::UnixMillis, "pexpireat", out);
}

fn expire_generic(
    db: &mut Db,
    cmd: &Command,
    unit: TimeArg,
    name: &'static str,
    out: &mut dyn ReplyOut,
) {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in &cmd.args()[3..] {
        let flag = match opt.to_ascii_lowercase().as_slice() {
            b"nx" => &mut nx,
            b"xx" => &mut xx,
            b"gt" => &mut gt,
            b"lt" => &mut lt,
            _ => {
                let opt = String::from_utf8_lossy(opt).into_owned();
                return out.reply(error(ExecError::UnsupportedOption(opt)));
            }
        };
        *flag = true;
    }
    if nx && (xx || gt || lt) {
        return out.reply(error(ExecError::ExpireNxWithOthers));
    }
    if gt && lt {
        return out.reply(error(ExecError::ExpireGtLt));
    }
    let at = match unit.deadline(cmd.arg(2), db.now(), false, name) {
        Ok(at) => at,
        Err(e) => return out.reply(error(e)),
    };
    let key = cmd.arg(1);
    let Some(current) = db.deadline(key) else {
        return out.reply(Reply::Integer(0));
    };
    // No deadline counts as an infinite one for GT and LT.
    let refused = (nx && current.is_some())
        || (xx && current.is_none())
        || (gt && current.is_none_or(|c| at <= c as i64))
        || (lt && current.is_some_and(|c| at >= c as i64));
    if refused {
        return out.reply(Reply::Integer(0));
    }
    // A deadline not after now deletes the key (Db::expire does).
    db.expire(key, Some(u64::try_from(at).unwrap_or(0)));
    out.reply(Reply::Integer(1));
}

const PERSIST: Spec = Spec::new(
    "persist",
    2,
    Flags::WRITE.union(Flags::FAST),
    Group::Generic,
    "Removes a key's time to live; 1 if it had one.",
    Handler::Data(persist),
)
.keys(Keys::one(1, KeyAccess::Overwrite))
.args(KEY_ARG)
.since("2.2.0");

fn persist(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let key = cmd.arg(1);
    if db.deadline(key).flatten().is_none() {
        return out.reply(Reply::Integer(0));
    }
    db.expire(key, None);
    out.reply(Reply::Integer(1));
}

/// How `TTL` and its kin report a deadline.
#[derive(Clone, Copy)]
enum TtlForm {
    Secs,
    Millis,
    UnixSecs,
    UnixMillis,
}

const fn ttl_spec(
    name: &'static str,
    summary: &'static str,
    handler: crate::command::table::DataHandler,
) -> Spec {
    Spec::new(
        name,
        2,
        READ_FAST,
        Group::Generic,
        summary,
        Handler::Data(handler),
    )
    .keys(Keys::one(1, KeyAccess::Read))
    .args(KEY_ARG)
}

const TTL: Spec = ttl_spec("ttl", "Seconds left to live (-1: none, -2: no key).", ttl);
const PTTL: Spec = ttl_spec(
    "pttl",
    "Milliseconds left to live (-1: none, -2: no key).",
    pttl,
);
const EXPIRETIME: Spec = ttl_spec(
    "expiretime",
    "When a key expires, unix seconds (-1, -2).",
    expiretime,
)
.since("7.0.0");
const PEXPIRETIME: Spec = ttl_spec(
    "pexpiretime",
    "When a key expires, unix milliseconds (-1, -2).",
    pexpiretime,
)
.since("7.0.0");

/// Appends what the proxy sends for a value it may cache: the read
/// (`GET key`) and the key's time to live in milliseconds (`PTTL`), in one
/// transaction so that both describe the same moment. Four replies come
/// back: `+OK`, `+QUEUED` twice, and the array of the value and the time.
pub fn encode_value_and_ttl_query(read: &Command, out: &mut bytes::BytesMut) {
    // A cacheable read has its one key where the table says.
    let key = read.arg(read.spec().keys.first);
    crate::command::encode_resp_args(&[Bytes::from_static(b"MULTI")], out);
    read.encode_resp(out);
    crate::command::encode_resp_args(&[Bytes::from_static(b"PTTL"), key.clone()], out);
    crate::command::encode_resp_args(&[Bytes::from_static(b"EXEC")], out);
}

fn ttl(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    ttl_generic(db, cmd, TtlForm::Secs, out);
}

fn pttl(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    ttl_generic(db, cmd, TtlForm::Millis, out);
}

fn expiretime(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    ttl_generic(db, cmd, TtlForm::UnixSecs, out);
}

fn pexpiretime(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    ttl_generic(db, cmd, TtlForm::UnixMillis, out);
}

fn ttl_generic(db: &mut Db, cmd: &Command, form: TtlForm, out: &mut dyn ReplyOut) {
    let now = db.now();
    let n = match db.deadline(cmd.arg(1)) {
        None => -2,
        Some(None) => -1,
        Some(Some(at)) => {
            let left = at.saturating_sub(now);
            match form {
                // Rounded to the nearest second, as Redis does.
                TtlForm::Secs => ((left + 500) / 1000) as i64,
                TtlForm::Millis => left as i64,
                TtlForm::UnixSecs => ((at + 500) / 1000) as i64,
                TtlForm::UnixMillis => at as i64,
            }
        }
    };
    out.reply(Reply::Integer(n));
}

const OBJECT: Spec = Spec::new(
    "object",
    -2,
    Flags::empty(),
    Group::Generic,
    "Facts about a key's value (ENCODING, FREQ, IDLETIME).",
    Handler::Container,
)
.since("2.2.3")
.subcommands(&[
    OBJECT_ENCODING,
    OBJECT_FREQ,
    OBJECT_IDLETIME,
    Spec::container_help("object|help", Group::Generic),
]);

const OBJECT_ENCODING: Spec = Spec::new(
    "object|encoding",
    3,
    Flags::READONLY,
    Group::Generic,
    "How Redis would encode the value: int, embstr or raw.",
    Handler::Data(object_encoding),
)
.keys(Keys::one(2, KeyAccess::Read))
.args(KEY_ARG);

fn object_encoding(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let Some(v) = db.get(cmd.arg(2)) else {
        return out.reply(Reply::Nil);
    };
    // kv stores every value as bytes; report the encoding Redis would
    // pick for it, which clients and tools inspect.
    let name = if v.len() <= 20 && parse::int(v).is_some() {
        "int"
    } else if v.len() <= 44 {
        "embstr"
    } else {
        "raw"
    };
    out.reply(Reply::Bulk(Bytes::from_static(name.as_bytes())));
}

const OBJECT_FREQ: Spec = Spec::new(
    "object|freq",
    3,
    Flags::READONLY,
    Group::Generic,
    "The key's logarithmic access counter (with an LFU maxmemory-policy).",
    Handler::Data(object_freq),
)
.keys(Keys::one(2, KeyAccess::Read))
.args(KEY_ARG);

fn object_freq(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let Some(word) = db.access_word(cmd.arg(2)) else {
        return out.reply(Reply::Nil);
    };
    match (db.store().access(), word) {
        (Some(a), Some(w)) if a.mode() == AccessMode::Lfu => {
            out.reply(Reply::Integer(i64::from(a.frequency(w))));
        }
        _ => out.reply(Reply::error(
            "ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please note that when switching between policies at runtime LRU and LFU data will take some time to adjust.",
        )),
    }
}

const OBJECT_IDLETIME: Spec = Spec::new(
    "object|idletime",
    3,
    Flags::READONLY,
    Group::Generic,
    "Seconds since the key was last accessed (with an LRU maxmemory-policy).",
    Handler::Data(object_idletime),
)
.keys(Keys::one(2, KeyAccess::Read))
.args(KEY_ARG);

fn object_idletime(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let Some(word) = db.access_word(cmd.arg(2)) else {
        return out.reply(Reply::Nil);
    };
    // Redis keeps access times under every policy but LFU; kv keeps them
    // only while an LRU policy needs them, and says so otherwise.
    match (db.store().access(), word) {
        (Some(a), Some(w)) if a.mode() == AccessMode::Lru => {
            out.reply(Reply::Integer((a.idle_ms(w) / 1000) as i64));
        }
        (Some(_), _) => out.reply(Reply::error(
            "ERR An LFU maxmemory policy is selected, idle time not tracked. Please note that when switching between policies at runtime LRU and LFU data will take some time to adjust.",
        )),
        (None, _) => out.reply(Reply::error(
            "ERR kv tracks access times only under an LRU maxmemory-policy, so OBJECT IDLETIME has no answer",
        )),
    }
}

const TIME: Spec = Spec::new(
    "time",
    1,
    Flags::READONLY.union(Flags::FAST).union(Flags::ANYTIME),
    Group::Server,
    "The server's time: unix seconds and microseconds.",
    Handler::Data(time),
)
.since("2.6.0");

fn time(db: &mut Db, _: &Command, out: &mut dyn ReplyOut) {
    let now = db.now();
    let secs = Bytes::from((now / 1000).to_string());
    let micros = Bytes::from(((now % 1000) * 1000).to_string());
    out.reply(Reply::Array(vec![Reply::Bulk(secs), Reply::Bulk(micros)]));
}

const DUMP: Spec = Spec::new(
    "dump",
    1,
    Flags::READONLY,
    Group::Generic,
    "Every pair, sorted by key (kv's own; not Redis's DUMP key).",
    Handler::Data(dump),
)
.since("0.1.0")
.complexity("O(N log N) where N is the number of keys.")
.shape(Shape::Pairs)
// Redis's DUMP takes a key and serializes that key's value.
.kv_only(
    "DUMP of every pair",
    "Use SCAN (or KEYS) for the keys, then MGET for their values",
);

fn dump(db: &mut Db, _cmd: &Command, out: &mut dyn ReplyOut) {
    if let Some(whole) = out.offer_stream(db.dump()) {
        let pairs = whole.into_pairs(db.store());
        out.reply(Reply::Pairs(pairs));
    }
}

#[cfg(test)]
mod tests {
    use crate::command::Command;
    use crate::reply::Reply;
    use crate::server::{Server, ServerConfig};
    use std::collections::HashSet;

    fn run(s: &mut Server, args: &[&str]) -> Reply {
        s.execute(Command::build(args).unwrap())
    }

    /// Redis's guarantee: a full SCAN returns every key that was there for
    /// the whole iteration, however the store grows and shrinks meanwhile.
    #[test]
    fn a_full_scan_returns_every_key_present_throughout_while_the_store_changes() {
        let mut s = Server::new(ServerConfig::default());
        for i in 0..500 {
            let _ = run(&mut s, &["SET", &format!("stay:{i}"), "v"]);
            let _ = run(&mut s, &["SET", &format!("go:{i}"), "v"]);
        }
        let (mut cursor, mut seen, mut round) = ("0".to_string(), HashSet::new(), 0);
        loop {
            let Reply::Array(parts) = run(&mut s, &["SCAN", &cursor, "COUNT", "7"]) else {
                panic!("SCAN replies an array");
            };
            let [Reply::Bulk(next), Reply::Array(keys)] = &parts[..] else {
                panic!("cursor and keys");
            };
            for k in keys {
                let Reply::Bulk(k) = k else { panic!("a key") };
                seen.insert(String::from_utf8_lossy(k).into_owned());
            }
            // Between calls: the store grows (new keys) and shrinks (the
            // `go:` keys leave), moving keys around inside it.
            for j in 0..5 {
                let _ = run(&mut s, &["SET", &format!("new:{round}:{j}"), "v"]);
            }
            let _ = run(
                &mut s,
                &[
                    "DEL",
                    &format!("go:{round}"),
                    &format!("go:{}", 499 - round),
                ],
            );
            round += 1;
            cursor = String::from_utf8_lossy(next).into_owned();
            if cursor == "0" {
                break;
            }
        }
        for i in 0..500 {
            assert!(seen.contains(&format!("stay:{i}")), "stay:{i} was missed");
        }
    }

    #[test]
    fn expire_options_follow_redis() {
        let mut s = Server::new(ServerConfig::default());
        s.set_time(1_000_000);
        let _ = run(&mut s, &["SET", "k", "v"]);
        assert_eq!(
            run(&mut s, &["EXPIRE", "k", "100", "XX"]),
            Reply::Integer(0)
        );
        assert_eq!(
            run(&mut s, &["EXPIRE", "k", "100", "GT"]),
            Reply::Integer(0)
        );
        assert_eq!(
            run(&mut s, &["EXPIRE", "k", "100", "LT"]),
            Reply::Integer(1)
        );
        assert_eq!(run(&mut s, &["EXPIRE", "k", "50", "NX"]), Reply::Integer(0));
        assert_eq!(
            run(&mut s, &["EXPIRE", "k", "200", "GT"]),
            Reply::Integer(1)
        );
        assert_eq!(run(&mut s, &["PTTL", "k"]), Reply::Integer(200_000));
        assert!(run(&mut s, &["EXPIRE", "k", "1", "NX", "GT"]).is_error());
        assert_eq!(run(&mut s, &["EXPIRE", "k", "-1"]), Reply::Integer(1));
        assert_eq!(run(&mut s, &["TTL", "k"]), Reply::Integer(-2));
    }
}
