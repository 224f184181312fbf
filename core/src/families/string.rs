//! The string family: GET and SET (the seed's PUT is an alias of SET).

use crate::command::table::{Arg, Cache, Flags, Group, Handler, KeyAccess, Keys, Spec};
use crate::command::Command;
use crate::db::{Db, Effect};
use crate::reply::{Reply, ReplyOut};

/// The family's commands.
pub const COMMANDS: &[Spec] = &[GET, SET];

const GET: Spec = Spec::new(
    "get",
    2,
    Flags::READONLY.union(Flags::FAST),
    Group::String,
    "Returns the value of a key, or nil if it is missing.",
    Handler::Data(get),
)
.keys(Keys::one(1, KeyAccess::Read))
.args(&[Arg::key("key")])
.cache(Cache::Value);

fn get(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    out.value(db.get(cmd.arg(1)));
}

const SET: Spec = Spec::new(
    "set",
    3,
    Flags::WRITE.union(Flags::DENYOOM),
    Group::String,
    "Stores a value under a key (inline: the rest of the line is the value).",
    Handler::Data(set),
)
.aliases(&["put"])
.keys(Keys::one(1, KeyAccess::Overwrite))
.args(&[Arg::key("key"), Arg::string("value")])
.inline_rest(2)
.cache(Cache::WriteThrough(set_effects));

fn set(db: &mut Db, cmd: &Command, out: &mut dyn ReplyOut) {
    db.set(cmd.arg(1), cmd.arg(2));
    out.reply(Reply::ok());
}

/// An acknowledged SET stored its value.
fn set_effects(cmd: &Command, reply: &Reply, effects: &mut Vec<Effect>) {
    if matches!(reply, Reply::Status(_)) {
        effects.push(Effect::Set {
            key: cmd.arg(1).clone(),
            value: cmd.arg(2).clone(),
        });
    }
}
