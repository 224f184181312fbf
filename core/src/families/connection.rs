//! The connection family: PING, ECHO, QUIT, HELLO, AUTH, SELECT and CLIENT.
//! None touches the keyspace: the node the client is connected to answers
//! them, the server and the proxy alike.

use crate::auth;
use crate::command::table::{Arg, Flags, Group, Handler, Spec};
use crate::command::Command;
use crate::errors::{CommandError, ExecError};
use crate::families::parse;
use crate::reply::Proto;
use crate::reply::Reply;
use crate::session::{
    KillFilter, Local, ReplyMode, TrackingOptions, TrackingRequest, REDIS_VERSION,
};
use bytes::Bytes;

/// The family's commands.
pub const COMMANDS: &[Spec] = &[PING, ECHO, QUIT, HELLO, AUTH, SELECT, CLIENT];

/// Connection commands run at any time, and fast.
const ANYTIME_FAST: Flags = Flags::ANYTIME.union(Flags::FAST);

const PING: Spec = Spec::new(
    "ping",
    -1,
    Flags::FAST
        .union(Flags::NO_AUTH)
        .union(Flags::SUBSCRIBED_OK),
    Group::Connection,
    "Replies PONG, or the message given.",
    Handler::Local(ping),
)
.args(&[Arg::string("message").optional()]);

fn ping(local: &mut Local<'_>, cmd: &Command) -> Reply {
    if local.session.subscriptions > 0 && local.session.proto == Proto::Resp2 {
        // A subscribed RESP2 connection reads messages: the answer is one
        // too, as Redis sends it.
        let message = cmd.args().get(1).cloned().unwrap_or_default();
        return Reply::Array(vec![
            Reply::Bulk(Bytes::from_static(b"pong")),
            Reply::Bulk(message),
        ]);
    }
    match cmd.args() {
        [_] => Reply::Status(Bytes::from_static(b"PONG")),
        [_, message] => Reply::Bulk(message.clone()),
        _ => CommandError::WrongArity { command: "ping" }.into(),
    }
}

const ECHO: Spec = Spec::new(
    "echo",
    2,
    Flags::FAST,
    Group::Connection,
    "Replies with the message given.",
    Handler::Local(echo),
)
.args(&[Arg::string("message")]);

fn echo(_: &mut Local<'_>, cmd: &Command) -> Reply {
    Reply::Bulk(cmd.arg(1).clone())
}

const QUIT: Spec = Spec::new(
    "quit",
    -1,
    ANYTIME_FAST
        .union(Flags::NO_AUTH)
        .union(Flags::IMMEDIATE)
        .union(Flags::SUBSCRIBED_OK),
    Group::Connection,
    "Replies OK, then closes the connection.",
    Handler::Local(quit),
);

fn quit(local: &mut Local<'_>, _: &Command) -> Reply {
    local.session.closing = true;
    Reply::ok()
}

const HELLO: Spec = Spec::new(
    "hello",
    -1,
    ANYTIME_FAST.union(Flags::NO_AUTH),
    Group::Connection,
    "Chooses the protocol (2 or 3), optionally authenticates and names the connection; says which server this is.",
    Handler::Local(hello),
)
.args(&[
    Arg::integer("protover").optional(),
    Arg::block(
        "auth",
        &[Arg::string("username"), Arg::string("password")],
    )
    .with_token("AUTH")
    .optional(),
    Arg::string("clientname").with_token("SETNAME").optional(),
])
.since("6.0.0");

fn hello(local: &mut Local<'_>, cmd: &Command) -> Reply {
    let args = cmd.args();
    let mut proto = local.session.proto;
    let mut i = 1;
    if let Some(v) = args.get(1) {
        proto = match parse::int(v) {
            Some(2) => Proto::Resp2,
            Some(3) => Proto::Resp3,
            Some(_) => return ExecError::NoProto.into(),
            None => return Reply::error("ERR Protocol version is not an integer or out of range"),
        };
        i = 2;
    }
    let (mut auth, mut name) = (None, None);
    while i < args.len() {
        let more = args.len() - i - 1;
        if args[i].eq_ignore_ascii_case(b"auth") && more >= 2 {
            auth = Some((&args[i + 1], &args[i + 2]));
            i += 3;
        } else if args[i].eq_ignore_ascii_case(b"setname") && more >= 1 {
            name = Some(&args[i + 1]);
            i += 2;
        } else {
            let opt = String::from_utf8_lossy(&args[i]).into_owned();
            return Reply::error(format!("ERR Syntax error in HELLO option '{opt}'"));
        }
    }
    if let Some((user, password)) = auth {
        let other_user = !user.eq_ignore_ascii_case(b"default");
        let (reply, ok) = auth::check(local.node.password(), password, other_user);
        if !ok || reply.is_error() && local.node.password().is_some() {
            return reply;
        }
        local.session.authenticated = true;
    }
    if !local.session.authenticated {
        return Reply::error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
    }
    if let Some(name) = name {
        if !plain_word(name) {
            return ExecError::BadClientName.into();
        }
        local.session.names_mut().name = (!name.is_empty()).then(|| name.clone());
    }
    local.session.proto = proto;
    let text = |s: &'static str| Reply::Bulk(Bytes::from_static(s.as_bytes()));
    Reply::Map(vec![
        // "redis", as Redis-compatible servers answer: client libraries
        // gate features on it (redis-py's client-side cache refuses any
        // other name); kv says what it is in `kv_version` and `kv_role`.
        (text("server"), text("redis")),
        (text("version"), text(REDIS_VERSION)),
        (text(KV_VERSION_FIELD), text(env!("CARGO_PKG_VERSION"))),
        (
            text("proto"),
            Reply::Integer(if proto == Proto::Resp3 { 3 } else { 2 }),
        ),
        (
            text("id"),
            Reply::Integer(i64::try_from(local.session.id).unwrap_or(i64::MAX)),
        ),
        (text("mode"), text("standalone")),
        (text("role"), text("master")),
        (text("kv_role"), text(local.node.role().name())),
        (text("modules"), Reply::Array(Vec::new())),
    ])
}

/// The field of kv's `HELLO` answer that Redis's lacks, by which a proxy
/// tells a kv server from another (both say `server: redis`).
pub const KV_VERSION_FIELD: &str = "kv_version";

/// Appends `HELLO 3`, which a connection the proxy opens for a RESP3
/// client starts with (one reply).
pub fn encode_hello3(out: &mut bytes::BytesMut) {
    crate::command::encode_resp_args(
        &[Bytes::from_static(b"HELLO"), Bytes::from_static(b"3")],
        out,
    );
}

/// The protocol `cmd` switches its connection to, if it is a `HELLO` that
/// names one (for the proxy, which relays it on a client's own
/// connection and must write what comes back in it).
pub fn hello_switches_to(cmd: &Command) -> Option<Proto> {
    if cmd.spec().name != HELLO.name {
        return None;
    }
    match cmd.args().get(1).map(|v| v.as_ref()) {
        Some(b"2") => Some(Proto::Resp2),
        Some(b"3") => Some(Proto::Resp3),
        _ => None,
    }
}

/// Whether `cmd` is `AUTH` (which the proxy answers itself even for a
/// client on a connection of its own: the client authenticates with the
/// proxy, and the proxy with the server).
pub fn is_auth(cmd: &Command) -> bool {
    cmd.spec().name == AUTH.name
}

/// Appends what the proxy sends on a connection to have the server track
/// the keys it reads there: `HELLO 3` (invalidations come as RESP3 pushes
/// on the same connection), then `CLIENT TRACKING ON`. Two replies come
/// back, in that order.
pub fn encode_tracking_handshake(out: &mut bytes::BytesMut) {
    crate::command::encode_resp_args(
        &[Bytes::from_static(b"HELLO"), Bytes::from_static(b"3")],
        out,
    );
    crate::command::encode_resp_args(
        &[
            Bytes::from_static(b"CLIENT"),
            Bytes::from_static(b"TRACKING"),
            Bytes::from_static(b"ON"),
        ],
        out,
    );
}

const AUTH: Spec = Spec::new(
    "auth",
    -2,
    ANYTIME_FAST.union(Flags::NO_AUTH),
    Group::Connection,
    "Authenticates the connection: AUTH [default] password.",
    Handler::Local(auth),
)
.args(&[Arg::string("username").optional(), Arg::string("password")]);

fn auth(local: &mut Local<'_>, cmd: &Command) -> Reply {
    let (user, password) = match cmd.args() {
        [_, password] => (None, password),
        [_, user, password] => (Some(user), password),
        _ => return ExecError::Syntax.into(),
    };
    // Only the default user exists.
    let other_user = user.is_some_and(|u| !u.eq_ignore_ascii_case(b"default"));
    let (reply, ok) = auth::check(local.node.password(), password, other_user);
    // A failed AUTH leaves the connection as it was, as in Redis.
    if ok {
        local.session.authenticated = true;
    }
    reply
}

const SELECT: Spec = Spec::new(
    "select",
    2,
    ANYTIME_FAST,
    Group::Connection,
    "Selects a database; only database 0 exists.",
    Handler::Local(select),
)
.args(&[Arg::integer("index")]);

fn select(_: &mut Local<'_>, cmd: &Command) -> Reply {
    match parse::int(cmd.arg(1)) {
        Some(0) => Reply::ok(),
        Some(_) => ExecError::DbIndexOutOfRange.into(),
        None => ExecError::NotInteger.into(),
    }
}

const CLIENT: Spec = Spec::new(
    "client",
    -2,
    Flags::empty(),
    Group::Connection,
    "This connection's identity, the list of clients and tracking (ID, GETNAME, SETNAME, SETINFO, LIST, INFO, KILL, TRACKING, CACHING, GETREDIR, TRACKINGINFO).",
    Handler::Container,
)
.since("2.4.0")
.subcommands(&[
    CLIENT_ID,
    CLIENT_GETNAME,
    CLIENT_SETNAME,
    CLIENT_SETINFO,
    CLIENT_LIST,
    CLIENT_INFO,
    CLIENT_KILL,
    CLIENT_REPLY,
    CLIENT_TRACKING,
    CLIENT_CACHING,
    CLIENT_GETREDIR,
    CLIENT_TRACKINGINFO,
    Spec::container_help("client|help", Group::Connection),
]);

const CLIENT_REPLY: Spec = Spec::new(
    "client|reply",
    3,
    // Only the node a client is connected to can drop its replies; the
    // proxy's replies come from the server too, so it refuses.
    ANYTIME_FAST.union(Flags::CONN_STATE),
    Group::Connection,
    "Turns replies off (OFF), on (ON), or off for the next command (SKIP); pushes still arrive.",
    Handler::Local(client_reply),
)
.since("3.2.0");

fn client_reply(local: &mut Local<'_>, cmd: &Command) -> Reply {
    let mode = cmd.arg(2);
    let session = &mut local.session;
    if mode.eq_ignore_ascii_case(b"on") {
        session.reply = ReplyMode::On;
    } else if mode.eq_ignore_ascii_case(b"off") {
        session.reply = ReplyMode::Off;
    } else if mode.eq_ignore_ascii_case(b"skip") {
        if session.reply != ReplyMode::Off {
            session.reply = ReplyMode::SkipNext;
        }
    } else {
        return ExecError::Syntax.into();
    }
    Reply::ok()
}

const CLIENT_TRACKING: Spec = Spec::new(
    "client|tracking",
    -3,
    Flags::ANYTIME,
    Group::Connection,
    "Server-assisted client-side caching: ON|OFF [REDIRECT id] [PREFIX p ...] [BCAST] [OPTIN] [OPTOUT] [NOLOOP].",
    Handler::Local(client_tracking),
)
.since("6.0.0");

fn client_tracking(local: &mut Local<'_>, cmd: &Command) -> Reply {
    let args = cmd.args();
    let mut opts = TrackingOptions::default();
    let mut j = 3;
    while j < args.len() {
        let more = j + 1 < args.len();
        let a = &args[j];
        if a.eq_ignore_ascii_case(b"redirect") && more {
            j += 1;
            if opts.redirect.is_some() {
                return Reply::error("ERR A client can only redirect to a single other client");
            }
            match parse::int(&args[j]) {
                Some(id) => opts.redirect = Some(u64::try_from(id).unwrap_or(u64::MAX)),
                None => return ExecError::NotInteger.into(),
            }
        } else if a.eq_ignore_ascii_case(b"bcast") {
            opts.bcast = true;
        } else if a.eq_ignore_ascii_case(b"optin") {
            opts.optin = true;
        } else if a.eq_ignore_ascii_case(b"optout") {
            opts.optout = true;
        } else if a.eq_ignore_ascii_case(b"noloop") {
            opts.noloop = true;
        } else if a.eq_ignore_ascii_case(b"prefix") && more {
            j += 1;
            opts.prefixes.push(args[j].clone());
        } else {
            return ExecError::Syntax.into();
        }
        j += 1;
    }
    let request = if args[2].eq_ignore_ascii_case(b"on") {
        TrackingRequest::On(opts)
    } else if args[2].eq_ignore_ascii_case(b"off") {
        TrackingRequest::Off
    } else {
        return ExecError::Syntax.into();
    };
    local.node.tracking(local.session, request)
}

const CLIENT_CACHING: Spec = Spec::new(
    "client|caching",
    3,
    ANYTIME_FAST,
    Group::Connection,
    "In OPTIN (yes) or OPTOUT (no) tracking: whether the next command's keys are tracked.",
    Handler::Local(client_caching),
)
.since("6.0.0");

fn client_caching(local: &mut Local<'_>, cmd: &Command) -> Reply {
    let yes = if cmd.arg(2).eq_ignore_ascii_case(b"yes") {
        true
    } else if cmd.arg(2).eq_ignore_ascii_case(b"no") {
        false
    } else {
        return ExecError::Syntax.into();
    };
    local
        .node
        .tracking(local.session, TrackingRequest::Caching(yes))
}

const CLIENT_GETREDIR: Spec = Spec::new(
    "client|getredir",
    2,
    ANYTIME_FAST,
    Group::Connection,
    "The client tracking invalidations are redirected to: 0 none, -1 tracking off.",
    Handler::Local(client_getredir),
)
.since("6.0.0");

fn client_getredir(local: &mut Local<'_>, _: &Command) -> Reply {
    local
        .node
        .tracking(local.session, TrackingRequest::GetRedir)
}

const CLIENT_TRACKINGINFO: Spec = Spec::new(
    "client|trackinginfo",
    2,
    ANYTIME_FAST,
    Group::Connection,
    "This connection's tracking mode: flags, redirect, prefixes.",
    Handler::Local(client_trackinginfo),
)
.since("6.2.0");

fn client_trackinginfo(local: &mut Local<'_>, _: &Command) -> Reply {
    local.node.tracking(local.session, TrackingRequest::Info)
}

const CLIENT_ID: Spec = Spec::new(
    "client|id",
    2,
    ANYTIME_FAST,
    Group::Connection,
    "The connection's number.",
    Handler::Local(client_id),
)
.since("5.0.0");

fn client_id(local: &mut Local<'_>, _: &Command) -> Reply {
    Reply::Integer(i64::try_from(local.session.id).unwrap_or(i64::MAX))
}

const CLIENT_GETNAME: Spec = Spec::new(
    "client|getname",
    2,
    ANYTIME_FAST,
    Group::Connection,
    "The name set with CLIENT SETNAME, or nil.",
    Handler::Local(client_getname),
)
.since("2.6.9");

fn client_getname(local: &mut Local<'_>, _: &Command) -> Reply {
    local
        .session
        .names()
        .and_then(|n| n.name.clone())
        .map_or(Reply::Nil, Reply::Bulk)
}

const CLIENT_SETNAME: Spec = Spec::new(
    "client|setname",
    3,
    ANYTIME_FAST,
    Group::Connection,
    "Names the connection (an empty name clears it).",
    Handler::Local(client_setname),
)
.args(&[Arg::string("connection-name")])
.since("2.6.9");

fn client_setname(local: &mut Local<'_>, cmd: &Command) -> Reply {
    let name = cmd.arg(2);
    if !plain_word(name) {
        return ExecError::BadClientName.into();
    }
    local.session.names_mut().name = (!name.is_empty()).then(|| name.clone());
    Reply::ok()
}

const CLIENT_SETINFO: Spec = Spec::new(
    "client|setinfo",
    4,
    ANYTIME_FAST,
    Group::Connection,
    "Records the client library's name or version (LIB-NAME, LIB-VER).",
    Handler::Local(client_setinfo),
)
.args(&[Arg::oneof(
    "attr",
    &[
        Arg::string("libname").with_token("LIB-NAME"),
        Arg::string("libver").with_token("LIB-VER"),
    ],
)])
.since("7.2.0");

fn client_setinfo(local: &mut Local<'_>, cmd: &Command) -> Reply {
    let (attr, value) = (cmd.arg(2), cmd.arg(3));
    let names = local.session.names_mut();
    let slot = if attr.eq_ignore_ascii_case(b"lib-name") {
        &mut names.lib_name
    } else if attr.eq_ignore_ascii_case(b"lib-ver") {
        &mut names.lib_ver
    } else {
        return ExecError::UnrecognizedOption(String::from_utf8_lossy(attr).into_owned()).into();
    };
    if !plain_word(value) {
        let attr = String::from_utf8_lossy(attr).to_ascii_uppercase();
        return ExecError::BadClientInfo(attr).into();
    }
    *slot = (!value.is_empty()).then(|| value.clone());
    Reply::ok()
}

const CLIENT_LIST: Spec = Spec::new(
    "client|list",
    -2,
    Flags::ADMIN.union(Flags::ANYTIME),
    Group::Connection,
    "One line per client: id, addresses, name, age, protocol, transaction.",
    Handler::Local(client_list),
)
.since("2.4.0");

fn client_list(local: &mut Local<'_>, cmd: &Command) -> Reply {
    match cmd.args().get(2) {
        None => {}
        // Every kv client is a normal one.
        Some(t)
            if t.eq_ignore_ascii_case(b"type")
                && cmd.args().len() == 4
                && !cmd.arg(3).eq_ignore_ascii_case(b"normal") =>
        {
            return Reply::Verbatim {
                format: *b"txt",
                text: Bytes::new(),
            };
        }
        Some(t) if t.eq_ignore_ascii_case(b"type") && cmd.args().len() == 4 => {}
        Some(_) => return ExecError::Syntax.into(),
    }
    match local.node.client_list(local.session) {
        Ok(list) => Reply::Verbatim {
            format: *b"txt",
            text: Bytes::from(list),
        },
        Err(e) => Reply::error(e),
    }
}

const CLIENT_INFO: Spec = Spec::new(
    "client|info",
    2,
    ANYTIME_FAST,
    Group::Connection,
    "This client's line of CLIENT LIST.",
    Handler::Local(client_info),
)
.since("6.2.0");

fn client_info(local: &mut Local<'_>, _: &Command) -> Reply {
    Reply::Verbatim {
        format: *b"txt",
        text: Bytes::from(local.node.client_info(local.session)),
    }
}

const CLIENT_KILL: Spec = Spec::new(
    "client|kill",
    -3,
    Flags::ADMIN.union(Flags::ANYTIME),
    Group::Connection,
    "Closes clients: KILL ip:port, or KILL ID id | ADDR ip:port | LADDR ip:port | SKIPME yes|no ...",
    Handler::Local(client_kill),
)
.since("2.4.0");

fn client_kill(local: &mut Local<'_>, cmd: &Command) -> Reply {
    let args = &cmd.args()[2..];
    if let [addr] = args {
        // The old form: one address, OK or an error.
        let filter = KillFilter {
            addr: Some(String::from_utf8_lossy(addr).into_owned()),
            ..KillFilter::default()
        };
        return match local.node.client_kill(&filter, local.session) {
            Ok(0) => Reply::error("ERR No such client"),
            Ok(_) => Reply::ok(),
            Err(e) => Reply::error(e),
        };
    }
    if args.len() % 2 != 0 {
        return ExecError::Syntax.into();
    }
    let mut filter = KillFilter {
        skip_me: true,
        ..KillFilter::default()
    };
    for pair in args.chunks_exact(2) {
        let (name, value) = (&pair[0], &pair[1]);
        let text = String::from_utf8_lossy(value).into_owned();
        if name.eq_ignore_ascii_case(b"id") {
            match parse::int(value).and_then(|n| u64::try_from(n).ok()) {
                Some(id) => filter.id = Some(id),
                None => return Reply::error("ERR client-id should be greater than 0"),
            }
        } else if name.eq_ignore_ascii_case(b"addr") {
            filter.addr = Some(text);
        } else if name.eq_ignore_ascii_case(b"laddr") {
            filter.laddr = Some(text);
        } else if name.eq_ignore_ascii_case(b"skipme") {
            filter.skip_me = match text.to_ascii_lowercase().as_str() {
                "yes" => true,
                "no" => false,
                _ => return ExecError::Syntax.into(),
            };
        } else {
            return ExecError::Syntax.into();
        }
    }
    match local.node.client_kill(&filter, local.session) {
        Ok(n) => Reply::Integer(n as i64),
        Err(e) => Reply::error(e),
    }
}

/// Redis's rule for names: printable ASCII without spaces.
fn plain_word(s: &[u8]) -> bool {
    s.iter().all(|&b| (b'!'..=b'~').contains(&b))
}
