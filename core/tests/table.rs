//! The command table is the one place a command is described. These tests
//! hold the rest of the system to it:
//!
//! - every entry is well formed (names, arity, flags, keys, docs);
//! - every entry, under its name and under each alias, is handled: neither
//!   the server nor the proxy refuses its smallest call as unknown or of
//!   the wrong arity; the proxy forwards it exactly when it is a data
//!   command, and then replies as the server does;
//! - the proxy's source quotes no command name (the handshake's `AUTH`
//!   aside): it routes by the table;
//! - a command without an entry is refused as unknown by the server and
//!   the proxy alike, and never forwarded;
//! - the commands the README documents all have entries, and `COMMAND
//!   COUNT` and `COMMAND` count every top-level entry.

use bytes::{Bytes, BytesMut};
use kv_core::command::table::{Cache, Flags, Handler, Spec, Table};
use kv_core::{
    ClientKind, Instant, Lane, Proxy, ProxyConfig, ProxyEvent, Reply, ReplyDecoder, Server,
    ServerConfig, ServerConnection,
};

/// Every spec, subcommands included.
fn every_spec() -> Vec<&'static Spec> {
    let mut all = Vec::new();
    for spec in Table::get().commands() {
        all.push(*spec);
        all.extend(spec.subcommands.iter());
    }
    all
}

#[test]
fn every_entry_is_well_formed() {
    let mut names = std::collections::HashSet::new();
    for spec in every_spec() {
        let n = spec.name;
        assert_eq!(n, n.to_ascii_lowercase(), "{n}: names are lower case");
        for name in std::iter::once(n).chain(spec.aliases.iter().copied()) {
            assert!(names.insert(name), "{name} is in the table twice");
        }
        assert!(spec.arity != 0, "{n}: arity 0 means nothing");
        assert!(
            !spec.summary.is_empty(),
            "{n}: HELP and COMMAND DOCS need a summary"
        );
        let data = spec.is_data();
        let reads = spec.flags.contains(Flags::READONLY);
        let writes = spec.flags.contains(Flags::WRITE);
        if data {
            assert!(reads != writes, "{n}: a data command reads or writes");
        } else {
            assert!(!writes, "{n}: only data commands write");
            // WATCH names keys without reading or writing them.
            let tx = matches!(spec.handler, Handler::Tx(_));
            assert!(
                spec.keys.is_none() || tx,
                "{n}: only data and transaction commands have keys"
            );
        }
        if !spec.keys.is_none() {
            let min = spec.arity.unsigned_abs() as usize;
            assert!(
                spec.keys.first < min,
                "{n}: its first key is within its arity"
            );
        }
        if matches!(spec.cache, Cache::Value) {
            assert!(
                data && reads,
                "{n}: only reads can be answered from a cache"
            );
            assert_eq!(
                spec.keys
                    .positions(spec.arity.unsigned_abs() as usize)
                    .count(),
                1,
                "{n}: a cached read has exactly one key"
            );
        }
        if matches!(spec.cache, Cache::WriteThrough(_)) {
            assert!(writes, "{n}: only writes write through");
        }
        match spec.handler {
            Handler::Container => {
                assert!(
                    !spec.subcommands.is_empty(),
                    "{n}: a container has subcommands"
                );
                assert_eq!(spec.arity, -2, "{n}: a container needs its subcommand");
            }
            _ => assert!(
                spec.container().is_some() || spec.subcommands.is_empty() || spec.arity == -1,
                "{n}: a command with subcommands and a bare form takes any arity"
            ),
        }
        for sub in spec.subcommands {
            assert_eq!(
                sub.container(),
                Some(n),
                "{}: a subcommand is named container|sub",
                sub.name
            );
            assert!(
                sub.arity.unsigned_abs() >= 2,
                "{}: counts its container",
                sub.name
            );
        }
    }
}

/// A proxy wired in memory to its own server, as in the proxy scenarios.
struct Stack {
    proxy: Proxy,
    server: Server,
    upstream: ServerConnection,
    /// The proxy's bulk lane, at the server.
    bulk: ServerConnection,
    /// A client straight to the server.
    direct: ServerConnection,
}

impl Stack {
    fn new() -> Self {
        let server = Server::new(ServerConfig::default());
        let mut proxy = Proxy::new(ProxyConfig::default(), Instant::ZERO);
        proxy.handle_upstream_connected(Lane::Main, Instant::ZERO);
        proxy.handle_upstream_connected(Lane::Bulk, Instant::ZERO);
        Stack {
            upstream: ServerConnection::new(server.config().limits),
            bulk: ServerConnection::new(server.config().limits),
            direct: ServerConnection::new(server.config().limits),
            proxy,
            server,
        }
    }

    /// One RESP command straight to the server; its reply.
    fn server(&mut self, args: &[&[u8]]) -> Reply {
        let mut wire = BytesMut::new();
        kv_core::command::encode_resp_args(&to_bytes(args), &mut wire);
        self.direct.handle_input(&mut self.server, &wire);
        decode_one(&self.direct.transmit_all(&mut self.server))
    }

    /// One RESP command through the proxy; its reply, and whether it went
    /// upstream.
    fn proxy(&mut self, args: &[&[u8]]) -> (Reply, bool) {
        let now = Instant::ZERO;
        let id = self.proxy.add_client(ClientKind::Stream, now);
        let before = self.proxy.stats().upstream_requests;
        let mut wire = BytesMut::new();
        kv_core::command::encode_resp_args(&to_bytes(args), &mut wire);
        self.proxy.handle_client_input(id, &wire, now);
        while let Some(event) = self.proxy.poll_event() {
            assert!(
                matches!(event, ProxyEvent::ClientReady(_)),
                "{args:?}: the pipe broke: {event:?}"
            );
        }
        if let Some(request) = self.proxy.poll_upstream_transmit(Lane::Main) {
            self.upstream.handle_input(&mut self.server, &request);
            let replies = self.upstream.transmit_all(&mut self.server);
            self.proxy.handle_upstream_input(Lane::Main, &replies, now);
        }
        if let Some(request) = self.proxy.poll_upstream_transmit(Lane::Bulk) {
            self.bulk.handle_input(&mut self.server, &request);
            let replies = self.bulk.transmit_all(&mut self.server);
            self.proxy.handle_upstream_input(Lane::Bulk, &replies, now);
        }
        let out = self.proxy.poll_client_transmit(id).unwrap_or_default();
        self.proxy.remove_client(id);
        let forwarded = self.proxy.stats().upstream_requests > before;
        (decode_one(&out), forwarded)
    }
}

fn to_bytes(args: &[&[u8]]) -> Vec<Bytes> {
    args.iter().map(|a| Bytes::copy_from_slice(a)).collect()
}

fn decode_one(wire: &[u8]) -> Reply {
    let mut d = ReplyDecoder::default();
    d.feed(wire);
    let reply = d
        .next_reply()
        .expect("a well-formed reply")
        .expect("a whole reply");
    assert_eq!(d.buffered(), 0, "one reply per command");
    reply
}

/// The smallest call of `spec` its arity allows: the name (and
/// subcommand's name), then `k1`, `k2` … for the rest.
fn minimal_call(spec: &Spec) -> Vec<Vec<u8>> {
    let mut args: Vec<Vec<u8>> = spec
        .name
        .split('|')
        .map(|w| w.to_ascii_uppercase().into_bytes())
        .collect();
    let argc = spec.arity.unsigned_abs() as usize;
    while args.len() < argc {
        args.push(format!("k{}", args.len()).into_bytes());
    }
    args
}

fn is_table_error(reply: &Reply) -> bool {
    matches!(reply, Reply::Error(e) if e.starts_with(b"ERR unknown")
        || e.starts_with(b"ERR wrong number of arguments"))
}

/// Sends `call` (a call of `spec`, under its name or an alias; `name` in
/// the messages) to a fresh server and, through a fresh proxy, to its own
/// server: neither refuses it as unknown or of the wrong arity, the proxy
/// forwards it exactly when it is a data command, and then replies as the
/// server does.
fn assert_handled(spec: &Spec, call: &[Vec<u8>], name: &str) {
    let args: Vec<&[u8]> = call.iter().map(Vec::as_slice).collect();
    // Each on a fresh server: a command need not be idempotent (SETNX).
    let direct = Stack::new().server(&args);
    let (proxied, forwarded) = Stack::new().proxy(&args);
    assert!(
        !is_table_error(&direct),
        "{name}: the server said {direct:?}"
    );
    assert!(
        !is_table_error(&proxied),
        "{name}: the proxy said {proxied:?}"
    );
    // Data commands go to the server (or its cache) and come back as the
    // server answers them; the rest the proxy answers itself.
    // PUBLISH and PUBSUB are the server's too; the subscriptions need a
    // connection of their own, and the proxy refuses them.
    let server_side = spec.is_data()
        || (matches!(spec.handler, Handler::PubSub(_)) && !spec.flags.contains(Flags::CONN_STATE));
    assert_eq!(forwarded, server_side, "{name}: forwarded {forwarded}");
    if server_side {
        assert_eq!(proxied, direct, "{name}: the proxy's reply is the server's");
    }
}

#[test]
fn every_entry_is_handled_by_the_server_and_routed_by_the_proxy() {
    for spec in every_spec() {
        if matches!(spec.handler, Handler::Container) {
            continue;
        }
        assert_handled(spec, &minimal_call(spec), spec.name);
    }
}

#[test]
fn every_alias_is_handled_by_the_server_and_routed_by_the_proxy() {
    let mut aliases = 0;
    for spec in Table::get().commands() {
        for alias in spec.aliases {
            // A container's alias is called with each of its subcommands.
            let calls: Vec<&Spec> = match spec.handler {
                Handler::Container => spec.subcommands.iter().collect(),
                _ => vec![*spec],
            };
            for called in calls {
                let mut call = minimal_call(called);
                call[0] = alias.to_ascii_uppercase().into_bytes();
                let name = format!("{} (alias {alias})", called.name);
                assert_handled(called, &call, &name);
            }
            aliases += 1;
        }
    }
    assert!(aliases > 0, "the table has aliases to call");
}

#[test]
fn exists_is_one_entry_and_one_handler_and_the_proxy_routes_it() {
    let mut stack = Stack::new();
    stack.server(&[b"SET", b"a", b"1"]);
    // A key named twice counts twice, as in Redis.
    assert_eq!(
        stack.server(&[b"EXISTS", b"a", b"b", b"a"]),
        Reply::Integer(2)
    );
    let (reply, forwarded) = stack.proxy(&[b"EXISTS", b"a", b"b", b"a"]);
    assert_eq!(reply, Reply::Integer(2));
    assert!(forwarded, "a read of the keyspace goes upstream");
    // Cached through the proxy, then deleted behind its back: EXISTS sees
    // the server's state, and the proxy drops what it cached for the key
    // (a later GET must not read older than what EXISTS saw).
    assert_eq!(
        stack.proxy(&[b"GET", b"a"]),
        (Reply::Bulk(Bytes::from_static(b"1")), true)
    );
    assert_eq!(
        stack.proxy(&[b"GET", b"a"]),
        (Reply::Bulk(Bytes::from_static(b"1")), false),
        "a cache hit"
    );
    stack.server(&[b"DEL", b"a"]);
    assert_eq!(stack.proxy(&[b"EXISTS", b"a"]), (Reply::Integer(0), true));
    assert_eq!(
        stack.proxy(&[b"GET", b"a"]),
        (Reply::Nil, true),
        "after EXISTS saw it gone, GET goes upstream too"
    );
}

#[test]
fn a_command_without_an_entry_is_unknown_everywhere_and_never_forwarded() {
    let mut stack = Stack::new();
    let unknown = Reply::Error(Bytes::from_static(b"ERR unknown command 'FROB'"));
    assert_eq!(stack.server(&[b"FROB", b"x"]), unknown);
    assert_eq!(stack.proxy(&[b"FROB", b"x"]), (unknown, false));
    // A container's unknown subcommand likewise.
    let (reply, forwarded) = stack.proxy(&[b"CONFIG", b"FROB"]);
    assert_eq!(
        reply,
        Reply::Error(Bytes::from_static(
            b"ERR unknown subcommand 'FROB'. Try CONFIG HELP."
        ))
    );
    assert!(!forwarded);
}

/// The proxy decides from the table alone: its source names no command
/// (the handshake's own `AUTH` aside, which the proxy sends as a client).
#[test]
fn the_proxy_names_no_command() {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src/proxy"));
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    files.sort();
    assert!(
        !files.is_empty(),
        "found no proxy source in {}",
        dir.display()
    );
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|file| {
            let source = std::fs::read_to_string(file)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
            (file.display().to_string(), source.to_ascii_lowercase())
        })
        .collect();
    for spec in every_spec() {
        for name in std::iter::once(spec.name).chain(spec.aliases.iter().copied()) {
            if name == "auth" {
                continue;
            }
            for quoted in [format!("\"{name}\""), format!("b\"{name}\"")] {
                for (file, source) in &sources {
                    assert!(
                        !source.contains(&quoted),
                        "the proxy's code names {quoted} ({file}): it must route by the table"
                    );
                }
            }
        }
    }
}

/// Every `*.rs` file under `dir`, subdirectories included, into `files`.
fn rust_files(dir: &std::path::Path, files: &mut Vec<std::path::PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn the_documented_commands_have_entries() {
    // The README's table of commands by family:
    // `| strings | \`GET\`, \`SET key value …\` … |`.
    let readme = include_str!("../../README.md");
    let table = Table::get();
    let families = [
        "strings",
        "keyspace",
        "transactions",
        "connection",
        "server",
    ];
    let mut documented = 0;
    for line in readme.lines() {
        let mut cells = line.split(" | ");
        let family = cells.next().unwrap_or_default().trim_start_matches("| ");
        if !families.contains(&family) {
            continue;
        }
        let cell = cells.next().unwrap_or_default();
        for quoted in cell.split('`').skip(1).step_by(2) {
            let name = quoted.split_whitespace().next().unwrap_or_default();
            assert!(
                table.lookup(name.as_bytes()).is_some(),
                "the README documents {name}, which the table lacks"
            );
            documented += 1;
        }
    }
    assert!(documented >= 60, "found the README's table of commands");
    // COMMAND COUNT and COMMAND list every entry.
    let mut s = Server::new(ServerConfig::default());
    let count = s.execute(kv_core::Command::build(&["COMMAND", "COUNT"]).unwrap());
    assert_eq!(count, Reply::Integer(table.commands().len() as i64));
    let Reply::Array(all) = s.execute(kv_core::Command::build(&["COMMAND"]).unwrap()) else {
        panic!("COMMAND is an array")
    };
    assert_eq!(all.len(), table.commands().len());
}
