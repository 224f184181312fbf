//! `COMMAND`, `COMMAND INFO`, `COMMAND DOCS` and `HELP`, generated from the
//! [table](super::table), in Redis's reply formats (redis-cli builds its
//! hints from `COMMAND DOCS`).
//!
//! Redis 7 answers with RESP3 maps and sets, which RESP2 carries as flat
//! arrays; the private `map` and `set` helpers are the one place that
//! choice is made.

use super::table::{Arg, ArgKind, Flags, Group, Keys, Spec, Table};
use super::Command;
use crate::reply::Reply;
use crate::session::Local;
use bytes::Bytes;
use std::fmt::Write;

fn bulk(s: &str) -> Reply {
    Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()))
}

fn status(s: &str) -> Reply {
    Reply::Status(Bytes::copy_from_slice(s.as_bytes()))
}

/// A map, as RESP2 carries one: `key, value, key, value …`.
fn map(pairs: Vec<(&str, Reply)>) -> Reply {
    Reply::Array(pairs.into_iter().flat_map(|(k, v)| [bulk(k), v]).collect())
}

/// A set, as RESP2 carries one: an array.
fn set(items: Vec<Reply>) -> Reply {
    Reply::Array(items)
}

/// `COMMAND INFO`'s ten fields for one command: name, arity, flags, first
/// key, last key, key step, ACL categories, tips, key specs, subcommands.
pub fn info(spec: &Spec) -> Reply {
    let flags = Flags::NAMES
        .iter()
        .filter(|(f, _)| spec.flags.contains(*f))
        .map(|(_, n)| status(n))
        .collect();
    let k = spec.keys;
    Reply::Array(vec![
        bulk(spec.name),
        Reply::Integer(i64::from(spec.arity)),
        set(flags),
        Reply::Integer(k.first as i64),
        Reply::Integer(k.last as i64),
        Reply::Integer(k.step as i64),
        set(categories(spec).into_iter().map(status).collect()),
        set(Vec::new()),
        set(key_specs(k)),
        Reply::Array(spec.subcommands.iter().map(info).collect()),
    ])
}

/// The ACL categories Redis would give a command like this one.
fn categories(spec: &Spec) -> Vec<&'static str> {
    let f = spec.flags;
    let mut c = Vec::new();
    if f.contains(Flags::WRITE) {
        c.push("@write");
    }
    if f.contains(Flags::READONLY) {
        c.push("@read");
    }
    c.push(match spec.group {
        Group::String => "@string",
        Group::Generic => "@keyspace",
        Group::Connection => "@connection",
        Group::Server => "@admin",
        Group::Transactions => "@transaction",
        Group::PubSub => "@pubsub",
    });
    c.push(if f.contains(Flags::FAST) {
        "@fast"
    } else {
        "@slow"
    });
    c
}

/// The key spec equivalent to a legacy key range.
fn key_specs(k: Keys) -> Vec<Reply> {
    if k.is_none() {
        return Vec::new();
    }
    // Relative to the first key, as Redis's range spec counts.
    let lastkey = if k.last < 0 {
        k.last
    } else {
        k.last - k.first as isize
    };
    vec![map(vec![
        (
            "flags",
            set(k.access.flag_names().iter().map(|n| status(n)).collect()),
        ),
        (
            "begin_search",
            map(vec![
                ("type", bulk("index")),
                ("spec", map(vec![("index", Reply::Integer(k.first as i64))])),
            ]),
        ),
        (
            "find_keys",
            map(vec![
                ("type", bulk("range")),
                (
                    "spec",
                    map(vec![
                        ("lastkey", Reply::Integer(lastkey as i64)),
                        ("keystep", Reply::Integer(k.step as i64)),
                        ("limit", Reply::Integer(0)),
                    ]),
                ),
            ]),
        ),
    ])]
}

/// `COMMAND DOCS`' map for one command.
pub fn docs(spec: &Spec) -> Reply {
    let mut fields = vec![
        ("summary", bulk(spec.summary)),
        ("since", bulk(spec.since)),
        ("group", bulk(spec.group.name())),
        ("complexity", bulk(spec.complexity)),
    ];
    if !spec.args.is_empty() {
        fields.push(("arguments", arg_list(spec.args)));
    }
    if !spec.subcommands.is_empty() {
        let subs = spec
            .subcommands
            .iter()
            .flat_map(|s| [bulk(s.name), docs(s)])
            .collect();
        fields.push(("subcommands", Reply::Array(subs)));
    }
    map(fields)
}

fn arg_list(args: &[Arg]) -> Reply {
    Reply::Array(
        args.iter()
            .map(|a| {
                let mut f = vec![("name", bulk(a.name)), ("type", bulk(a.kind.name()))];
                if a.kind == ArgKind::Key {
                    f.push(("key_spec_index", Reply::Integer(0)));
                }
                if let Some(t) = a.token {
                    f.push(("token", bulk(t)));
                }
                let mut flags = Vec::new();
                if a.optional {
                    flags.push(status("optional"));
                }
                if a.multiple {
                    flags.push(status("multiple"));
                }
                if !flags.is_empty() {
                    f.push(("flags", set(flags)));
                }
                if matches!(a.kind, ArgKind::Oneof | ArgKind::Block) {
                    f.push(("arguments", arg_list(a.args)));
                }
                map(f)
            })
            .collect(),
    )
}

/// Every command's `COMMAND INFO`, as bare `COMMAND` answers.
pub fn all_info() -> Reply {
    Reply::Array(Table::get().commands().iter().map(|s| info(s)).collect())
}

/// The usage line of a command: `SET key value`, `DEL key [key ...]`.
pub fn usage(spec: &Spec) -> String {
    let mut s = spec.name.replace('|', " ").to_ascii_uppercase();
    for a in spec.args {
        s.push(' ');
        push_arg(&mut s, a);
    }
    s
}

fn push_arg(s: &mut String, a: &Arg) {
    let mut one = String::new();
    if let Some(t) = a.token {
        one.push_str(t);
        if a.kind != ArgKind::PureToken {
            one.push(' ');
        }
    }
    match a.kind {
        ArgKind::PureToken => {}
        ArgKind::Oneof => {
            let alts: Vec<String> = a
                .args
                .iter()
                .map(|x| {
                    let mut t = String::new();
                    push_arg(&mut t, x);
                    t
                })
                .collect();
            one.push_str(&alts.join(" | "));
        }
        ArgKind::Block => {
            for (i, x) in a.args.iter().enumerate() {
                if i > 0 {
                    one.push(' ');
                }
                push_arg(&mut one, x);
            }
        }
        _ => one.push_str(a.name),
    }
    if a.multiple {
        one = format!("{one} [{one} ...]");
    }
    if a.optional {
        let _ = write!(s, "[{one}]");
    } else {
        s.push_str(&one);
    }
}

/// The reply of `<CONTAINER> HELP` ([`Spec::container_help`]): a line
/// naming the form, then each subcommand's usage and summary, as Redis
/// words it.
pub fn container_help(_: &mut Local<'_>, cmd: &Command) -> Reply {
    let container = cmd
        .spec()
        .container()
        .and_then(|name| Table::get().lookup(name.as_bytes()));
    let Some((name, container)) = container else {
        return Reply::Array(Vec::new());
    };
    let name = name.to_ascii_uppercase();
    let mut lines = vec![status(&format!(
        "{name} <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"
    ))];
    for sub in container.subcommands {
        let usage = usage(sub);
        let usage = usage.strip_prefix(&format!("{name} ")).unwrap_or(&usage);
        lines.push(status(usage));
        lines.push(status(&format!("    {}", sub.summary)));
    }
    Reply::Array(lines)
}

/// The text of `HELP`: every command (and subcommand) of the table with its
/// usage and summary.
pub fn help_text() -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    for spec in Table::get().commands() {
        let mut summary = spec.summary.to_string();
        if !spec.aliases.is_empty() {
            let _ = write!(
                summary,
                " Alias: {}.",
                spec.aliases
                    .iter()
                    .map(|a| a.to_ascii_uppercase())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if spec.subcommands.is_empty() || !matches!(spec.handler, super::table::Handler::Container)
        {
            rows.push((usage(spec), summary));
        }
        for sub in spec.subcommands {
            rows.push((usage(sub), sub.summary.to_string()));
        }
    }
    let width = rows.iter().map(|(u, _)| u.len()).max().unwrap_or(0);
    let mut text = String::from("Commands (case-insensitive):\n");
    for (usage, summary) in rows {
        let _ = writeln!(text, "  {usage:width$}  {summary}");
    }
    text.pop();
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Server, ServerConfig};

    #[test]
    fn the_unknown_subcommand_hint_leads_to_the_subcommands() {
        let mut server = Server::new(ServerConfig::default());
        let mut run = |args: &[&str]| match Command::build(args) {
            Ok(cmd) => server.execute(cmd),
            Err(e) => e.into(),
        };
        let Reply::Error(e) = run(&["config", "frob"]) else {
            panic!("CONFIG FROB is not an error");
        };
        assert_eq!(&e[..], b"ERR unknown subcommand 'frob'. Try CONFIG HELP.");
        let Reply::Array(lines) = run(&["CONFIG", "help"]) else {
            panic!("CONFIG HELP is not an array");
        };
        let lines: Vec<&[u8]> = lines
            .iter()
            .map(|l| match l {
                Reply::Status(s) => &s[..],
                other => panic!("not a status line: {other:?}"),
            })
            .collect();
        assert_eq!(
            lines,
            [
                &b"CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"[..],
                b"GET parameter [parameter ...]",
                b"    The parameters matching the glob patterns given, with their values.",
                b"SET parameter value [parameter value ...]",
                b"    Sets configuration parameters (those that can change while running).",
                b"HELP",
                b"    Shows the subcommands and what they do.",
            ]
        );
    }

    #[test]
    fn usage_lines_read_like_redis_docs() {
        let t = Table::get();
        let usage_of = |n: &str| usage(t.lookup(n.as_bytes()).unwrap().1);
        assert_eq!(
            usage_of("set"),
            "SET key value [NX | XX] [GET] [EX seconds | PX milliseconds | EXAT unix-time-seconds | PXAT unix-time-milliseconds | KEEPTTL]"
        );
        assert_eq!(usage_of("del"), "DEL key [key ...]");
        assert_eq!(usage_of("ping"), "PING [message]");
    }

    #[test]
    fn info_has_redis_ten_fields() {
        let (_, get) = Table::get().lookup(b"get").unwrap();
        let Reply::Array(fields) = info(get) else {
            panic!("not an array")
        };
        assert_eq!(fields.len(), 10);
        assert_eq!(fields[0], bulk("get"));
        assert_eq!(fields[1], Reply::Integer(2));
        assert_eq!(
            fields[2],
            Reply::Array(vec![status("readonly"), status("fast")])
        );
        assert_eq!(
            fields[3..6],
            [Reply::Integer(1), Reply::Integer(1), Reply::Integer(1)]
        );
    }

    #[test]
    fn help_lists_every_command() {
        let help = help_text();
        for spec in Table::get().commands() {
            let name = spec.name.to_ascii_uppercase();
            assert!(
                help.lines().any(|l| l.trim_start().starts_with(&name)),
                "{name} missing from HELP:\n{help}"
            );
        }
    }
}
