//! The keyspace family: DEL, EXISTS, and the seed's DUMP (every pair).

use crate::command::table::{Arg, Cache, Flags, Group, Handler, KeyAccess, Keys, Shape, Spec};
use crate::command::Command;
use crate::db::{Db, Effect};
use crate::reply::{Reply, ReplyOut};

/// The family's commands.
pub const COMMANDS: &[Spec] = &[DEL, EXISTS, DUMP];

const DEL: Spec = Spec::new(
    "del",
    -2,
    Flags::WRITE,
    Group::Generic,
    "Removes keys; replies with how many existed.",
    Handler::Data(del),
)
.keys(Keys::range(1, -1, 1, KeyAccess::Remove))
.args(&[Arg::key("key").multiple()])
.complexity("O(N) where N is the number of keys that will be removed.")
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
    Flags::READONLY.union(Flags::FAST),
    Group::Generic,
    "Counts the keys that exist (a key named twice counts twice).",
    Handler::Data(exists),
)
.keys(Keys::range(1, -1, 1, KeyAccess::Read))
.args(&[Arg::key("key").multiple()])
.since("3.0.3")
.complexity("O(N) where N is the number of keys to check.");

fn exists(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    let found = cmd.keys().filter(|k| db.contains(k)).count();
    out.reply(Reply::Integer(found as i64));
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
.shape(Shape::Pairs);

fn dump(db: &mut Db, _cmd: &Command, out: &mut dyn ReplyOut) {
    out.reply(Reply::Pairs(db.dump()));
}
