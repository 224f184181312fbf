//! The server family: INFO, CONFIG GET, COMMAND and HELP. Each node answers
//! them about itself: the proxy's INFO is the proxy's.

use crate::command::docs;
use crate::command::table::{Arg, Flags, Group, Handler, Shape, Spec, Table};
use crate::command::Command;
use crate::glob;
use crate::reply::Reply;
use crate::session::Local;
use bytes::Bytes;

/// The family's commands.
pub const COMMANDS: &[Spec] = &[INFO, CONFIG, COMMAND, HELP, FUNCTION];

const INFO: Spec = Spec::new(
    "info",
    -1,
    Flags::ANYTIME,
    Group::Server,
    "Counters and state of this node (the proxy's own at the proxy).",
    Handler::Local(info),
)
.args(&[Arg::string("section").optional().multiple()])
.shape(Shape::Text);

fn info(local: &mut Local<'_>, cmd: &Command) -> Reply {
    let sections = crate::session::InfoSections::parse(&cmd.args()[1..]);
    Reply::Text(local.node.info(&sections))
}

const CONFIG: Spec = Spec::new(
    "config",
    -2,
    Flags::empty(),
    Group::Server,
    "Reads and sets configuration parameters (GET, SET).",
    Handler::Container,
)
.since("2.0.0")
.subcommands(&[
    CONFIG_GET,
    CONFIG_SET,
    Spec::container_help("config|help", Group::Server),
]);

const CONFIG_GET: Spec = Spec::new(
    "config|get",
    -3,
    Flags::ANYTIME.union(Flags::ADMIN),
    Group::Server,
    "The parameters matching the glob patterns given, with their values.",
    Handler::Local(config_get),
)
.args(&[Arg::string("parameter").multiple()])
.since("2.0.0")
.complexity("O(N) when N is the number of configuration parameters provided");

/// redis-benchmark reads `save` and `appendonly` on start; report what is
/// true of this node rather than an error.
fn config_get(local: &mut Local<'_>, cmd: &Command) -> Reply {
    let params = local.node.config();
    let items = params
        .into_iter()
        .filter(|(name, _)| {
            cmd.args()[2..]
                .iter()
                .any(|p| glob::matches(p, name.as_bytes(), true))
        })
        .map(|(name, value)| {
            (
                Reply::Bulk(Bytes::from_static(name.as_bytes())),
                Reply::Bulk(Bytes::from(value)),
            )
        })
        .collect();
    // A map in RESP3, a flat array of names and values in RESP2, as Redis.
    Reply::Map(items)
}

const CONFIG_SET: Spec = Spec::new(
    "config|set",
    -4,
    Flags::ANYTIME.union(Flags::ADMIN),
    Group::Server,
    "Sets configuration parameters (those that can change while running).",
    Handler::Local(config_set),
)
.args(&[Arg::block("data", &[Arg::string("parameter"), Arg::string("value")]).multiple()])
.since("2.0.0")
.complexity("O(N) when N is the number of configuration parameters provided");

fn config_set(local: &mut Local<'_>, cmd: &Command) -> Reply {
    let pairs = &cmd.args()[2..];
    if pairs.len() % 2 != 0 {
        return crate::errors::CommandError::WrongArity {
            command: "config|set",
        }
        .into();
    }
    let names: Vec<String> = pairs
        .chunks_exact(2)
        .map(|p| String::from_utf8_lossy(&p[0]).to_ascii_lowercase())
        .collect();
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            return Reply::error(format!(
                "ERR CONFIG SET failed (possibly related to argument '{name}') - duplicate parameter"
            ));
        }
    }
    // All or nothing, as in Redis: when one value is refused, those set
    // before it get their old values back.
    let before = local.node.config();
    for (i, (p, name)) in pairs.chunks_exact(2).zip(&names).enumerate() {
        if let Err(e) = local.node.config_set(name, &p[1]) {
            for done in names[..i].iter().rev() {
                if let Some((_, old)) = before.iter().find(|(n, _)| n == done) {
                    let _ = local.node.config_set(done, old.as_bytes());
                }
            }
            return Reply::error(e);
        }
    }
    Reply::ok()
}

const FUNCTION: Spec = Spec::new(
    "function",
    -2,
    Flags::empty(),
    Group::Server,
    "Server-side functions: kv has none (FLUSH and LIST say so).",
    Handler::Container,
)
.since("7.0.0")
.subcommands(&[
    FUNCTION_FLUSH,
    FUNCTION_LIST,
    Spec::container_help("function|help", Group::Server),
]);

const FUNCTION_FLUSH: Spec = Spec::new(
    "function|flush",
    -2,
    Flags::ANYTIME,
    Group::Server,
    "Deletes every function: kv has none, so there is nothing to do.",
    Handler::Local(function_flush),
)
.args(&[Arg::oneof(
    "flush-type",
    &[Arg::token("async", "ASYNC"), Arg::token("sync", "SYNC")],
)
.optional()])
.since("7.0.0");

fn function_flush(_: &mut Local<'_>, cmd: &Command) -> Reply {
    match cmd.args() {
        [_, _] => Reply::ok(),
        [_, _, m] if m.eq_ignore_ascii_case(b"async") || m.eq_ignore_ascii_case(b"sync") => {
            Reply::ok()
        }
        _ => crate::errors::ExecError::Syntax.into(),
    }
}

const FUNCTION_LIST: Spec = Spec::new(
    "function|list",
    -2,
    Flags::ANYTIME,
    Group::Server,
    "Lists the libraries of functions: none.",
    Handler::Local(function_list),
)
.since("7.0.0");

fn function_list(_: &mut Local<'_>, _: &Command) -> Reply {
    Reply::Array(Vec::new())
}

const COMMAND: Spec = Spec::new(
    "command",
    -1,
    Flags::ANYTIME,
    Group::Server,
    "Describes every command (COUNT, INFO, DOCS, LIST for parts).",
    Handler::Local(command_all),
)
.since("2.8.13")
.complexity("O(N) where N is the total number of commands")
.subcommands(&[
    COMMAND_COUNT,
    COMMAND_INFO,
    COMMAND_DOCS,
    COMMAND_LIST,
    Spec::container_help("command|help", Group::Server),
]);

fn command_all(_: &mut Local<'_>, _: &Command) -> Reply {
    docs::all_info()
}

const COMMAND_COUNT: Spec = Spec::new(
    "command|count",
    2,
    Flags::ANYTIME,
    Group::Server,
    "How many commands there are.",
    Handler::Local(command_count),
)
.since("2.8.13");

fn command_count(_: &mut Local<'_>, _: &Command) -> Reply {
    Reply::Integer(Table::get().commands().len() as i64)
}

const COMMAND_INFO: Spec = Spec::new(
    "command|info",
    -2,
    Flags::ANYTIME,
    Group::Server,
    "What the named commands are (all of them without names); nil for unknown ones.",
    Handler::Local(command_info),
)
.args(&[Arg::string("command-name").optional().multiple()])
.since("2.8.13");

fn command_info(_: &mut Local<'_>, cmd: &Command) -> Reply {
    if cmd.args().len() == 2 {
        return docs::all_info();
    }
    let table = Table::get();
    Reply::Array(
        cmd.args()[2..]
            .iter()
            .map(|name| {
                table
                    .lookup(name)
                    .map_or(Reply::Nil, |(_, s)| docs::info(s))
            })
            .collect(),
    )
}

const COMMAND_DOCS: Spec = Spec::new(
    "command|docs",
    -2,
    Flags::ANYTIME,
    Group::Server,
    "Documentation of the named commands (all of them without names).",
    Handler::Local(command_docs),
)
.args(&[Arg::string("command-name").optional().multiple()])
.since("7.0.0");

fn command_docs(_: &mut Local<'_>, cmd: &Command) -> Reply {
    let table = Table::get();
    let specs: Vec<&Spec> = if cmd.args().len() == 2 {
        table.commands().to_vec()
    } else {
        cmd.args()[2..]
            .iter()
            .filter_map(|name| table.lookup(name).map(|(_, s)| s))
            .collect()
    };
    Reply::Array(
        specs
            .into_iter()
            .flat_map(|s| {
                [
                    Reply::Bulk(Bytes::from_static(s.name.as_bytes())),
                    docs::docs(s),
                ]
            })
            .collect(),
    )
}

const COMMAND_LIST: Spec = Spec::new(
    "command|list",
    2,
    Flags::ANYTIME,
    Group::Server,
    "The name of every command and subcommand.",
    Handler::Local(command_list),
)
.since("7.0.0");

fn command_list(_: &mut Local<'_>, _: &Command) -> Reply {
    let mut names = Vec::new();
    for spec in Table::get().commands() {
        names.push(Reply::Bulk(Bytes::from_static(spec.name.as_bytes())));
        names.extend(
            spec.subcommands
                .iter()
                .map(|s| Reply::Bulk(Bytes::from_static(s.name.as_bytes()))),
        );
    }
    Reply::Array(names)
}

const HELP: Spec = Spec::new(
    "help",
    -1,
    Flags::ANYTIME.union(Flags::NO_AUTH),
    Group::Server,
    "This list of commands.",
    Handler::Local(help),
)
.since("0.1.0")
.shape(Shape::Text);

fn help(_: &mut Local<'_>, _: &Command) -> Reply {
    Reply::Text(docs::help_text())
}
