//! A connection's own state, the same at the server and at the proxy, and
//! what the commands answered locally may ask of the node that answers
//! them.

use crate::auth::Password;
use crate::reply::{Proto, Reply};
use crate::server::Transaction;
use bytes::Bytes;

/// Which kind of node answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `kv server`.
    Server,
    /// `kv proxy`.
    Proxy,
}

impl Role {
    /// The name `INFO` and `HELLO` give.
    pub fn name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Proxy => "proxy",
        }
    }
}

/// One client connection's state: what `AUTH`, `QUIT` and `CLIENT` change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The connection's number, unique within its node (`CLIENT ID`).
    pub id: u64,
    /// Whether the connection may run every command.
    pub authenticated: bool,
    /// The connection asked to be closed (`QUIT`): once its replies are
    /// written.
    pub closing: bool,
    /// The names a client gave itself; boxed, since most never do and
    /// every idle connection pays for what is inline.
    names: Option<Box<Names>>,
    /// The protocol its replies are in (`HELLO 2|3`).
    pub proto: Proto,
    /// The transaction being queued and the keys watched, if any (the
    /// server's; boxed for the same reason as the names).
    pub tx: Option<Box<Transaction>>,
    /// Channels and patterns subscribed to: a RESP2 connection with any
    /// may run only the subscription commands, `PING` and `QUIT`.
    pub subscriptions: usize,
    /// `CLIENT TRACKING` is on: the node remembers what it reads.
    pub tracking: bool,
    /// Whether replies are sent (`CLIENT REPLY`).
    pub reply: ReplyMode,
}

/// `CLIENT REPLY`'s modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReplyMode {
    /// Every reply is sent.
    #[default]
    On,
    /// No reply is sent (pushes still are).
    Off,
    /// `CLIENT REPLY SKIP` ran: no reply to it, nor to the next command.
    SkipNext,
    /// This command's reply is skipped.
    Skip,
}

impl ReplyMode {
    /// Whether the current command's replies are dropped.
    pub fn muted(self) -> bool {
        self != ReplyMode::On
    }

    /// The mode for the next command.
    pub fn next(self) -> ReplyMode {
        match self {
            ReplyMode::SkipNext => ReplyMode::Skip,
            ReplyMode::Skip => ReplyMode::On,
            mode => mode,
        }
    }
}

/// `CLIENT TRACKING ON`'s options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackingOptions {
    /// `REDIRECT id`: invalidations go to that client instead.
    pub redirect: Option<u64>,
    /// `BCAST`: every change under the prefixes, read or not.
    pub bcast: bool,
    /// `OPTIN`: only the keys of commands after `CLIENT CACHING yes`.
    pub optin: bool,
    /// `OPTOUT`: all keys but those of commands after `CLIENT CACHING no`.
    pub optout: bool,
    /// `NOLOOP`: not the keys the client changed itself.
    pub noloop: bool,
    /// `PREFIX p` (with `BCAST`).
    pub prefixes: Vec<Bytes>,
}

/// What a client asks of the node about its tracking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackingRequest {
    /// `CLIENT TRACKING ON …`.
    On(TrackingOptions),
    /// `CLIENT TRACKING OFF`.
    Off,
    /// `CLIENT CACHING yes|no`.
    Caching(bool),
    /// `CLIENT GETREDIR`.
    GetRedir,
    /// `CLIENT TRACKINGINFO`.
    Info,
}

/// What `CLIENT SETNAME` and `CLIENT SETINFO` set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    /// Set with `CLIENT SETNAME`.
    pub name: Option<Bytes>,
    /// Set with `CLIENT SETINFO LIB-NAME`.
    pub lib_name: Option<Bytes>,
    /// Set with `CLIENT SETINFO LIB-VER`.
    pub lib_ver: Option<Bytes>,
}

impl Session {
    /// A new connection's session; without a password to give, it starts
    /// authenticated.
    pub fn new(id: u64, authenticated: bool) -> Session {
        Session {
            id,
            authenticated,
            closing: false,
            names: None,
            proto: Proto::Resp2,
            tx: None,
            subscriptions: 0,
            tracking: false,
            reply: ReplyMode::On,
        }
    }

    /// The names the client gave itself, if any.
    pub fn names(&self) -> Option<&Names> {
        self.names.as_deref()
    }

    /// The names, to set one.
    pub fn names_mut(&mut self) -> &mut Names {
        self.names.get_or_insert_with(Box::default)
    }
}

/// What a locally answered command may ask of the node it reached.
pub trait Node {
    /// Server or proxy.
    fn role(&self) -> Role;
    /// The text of `INFO` for the sections asked for.
    fn info(&self, sections: &InfoSections) -> String;
    /// The password connections must give, if any.
    fn password(&self) -> Option<&Password>;
    /// The configuration parameters `CONFIG GET` reports, with their values.
    fn config(&self) -> Vec<(&'static str, String)>;
    /// `CLIENT LIST`: one line per client; the error text if the node
    /// cannot list them.
    fn client_list(&self, current: &Session) -> Result<String, String>;
    /// `CLIENT INFO`: the line of the current client.
    fn client_info(&self, current: &Session) -> String;
    /// `CLIENT KILL`: closes the clients the filter matches; how many, or
    /// the error text if the node cannot.
    fn client_kill(&mut self, filter: &KillFilter, current: &Session) -> Result<usize, String>;
    /// Sets a configuration parameter (`CONFIG SET`); the error text if it
    /// cannot be set. By default only what is already true can be "set".
    fn config_set(&mut self, name: &str, value: &[u8]) -> Result<(), String> {
        default_config_set(&self.config(), name, value)
    }
    /// `CLIENT TRACKING`, `CACHING`, `GETREDIR` and `TRACKINGINFO`. By
    /// default refused: a node that does not carry tracking out must not
    /// answer `OK` to it, or its client would cache stale values forever.
    fn tracking(&mut self, session: &mut Session, request: TrackingRequest) -> Reply {
        let _ = (session, request);
        Reply::error("ERR client tracking is not supported by this node")
    }
}

/// Which clients `CLIENT KILL` closes: all of its filters must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KillFilter {
    /// `ID id`.
    pub id: Option<u64>,
    /// `ADDR ip:port` (or the old form's only argument).
    pub addr: Option<String>,
    /// `LADDR ip:port`.
    pub laddr: Option<String>,
    /// `SKIPME yes` (the default): the calling client is spared.
    pub skip_me: bool,
}

impl KillFilter {
    /// Whether client `id` at `addr` (connected to `laddr`) is to be
    /// killed, when `me` asks.
    pub fn matches(&self, id: u64, addr: &str, laddr: &str, me: u64) -> bool {
        !(self.skip_me && id == me)
            && self.id.is_none_or(|want| want == id)
            && self.addr.as_deref().is_none_or(|want| want == addr)
            && self.laddr.as_deref().is_none_or(|want| want == laddr)
    }
}

/// `CONFIG SET` of a parameter that cannot change while the node runs:
/// setting it to the value it has is accepted (the test suite restores
/// settings that way), anything else is refused with Redis's texts.
pub fn default_config_set(
    params: &[(&'static str, String)],
    name: &str,
    value: &[u8],
) -> Result<(), String> {
    match params.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        Some((_, current)) if current.as_bytes() == value => Ok(()),
        Some((n, _)) => Err(format!(
            "ERR CONFIG SET failed (possibly related to argument '{n}') - can't set immutable config"
        )),
        None => Err(format!(
            "ERR Unknown option or number of arguments for CONFIG SET - '{name}'"
        )),
    }
}

/// Which sections `INFO` was asked for, as Redis reads its arguments: none
/// or `default` for the default sections, `all` for those and the extra
/// ones (`commandstats` …), `everything` likewise, or names, any case.
#[derive(Debug, Clone, Default)]
pub struct InfoSections {
    names: Vec<String>,
    all: bool,
    default: bool,
}

impl InfoSections {
    /// From `INFO`'s arguments.
    pub fn parse(args: &[Bytes]) -> InfoSections {
        let mut s = InfoSections::default();
        if args.is_empty() {
            s.default = true;
        }
        for a in args {
            let name = String::from_utf8_lossy(a).to_ascii_lowercase();
            match name.as_str() {
                "all" | "everything" => s.all = true,
                "default" => s.default = true,
                _ => s.names.push(name),
            }
        }
        s
    }

    /// Whether a default section is wanted.
    pub fn wants(&self, section: &str) -> bool {
        self.all || self.default || self.names.iter().any(|n| n == section)
    }

    /// Whether a section outside the defaults is wanted.
    pub fn wants_extra(&self, section: &str) -> bool {
        self.all || self.names.iter().any(|n| n == section)
    }
}

/// The version of Redis whose semantics kv implements, which `HELLO` and
/// `INFO` report as Redis-compatible servers do: client libraries gate
/// features on it.
pub const REDIS_VERSION: &str = "7.4.0";

/// Facts about the process that only the driver can read (the core reads
/// no clock and no OS counters), for `INFO`. The driver refreshes them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostFacts {
    /// The process id.
    pub process_id: u32,
    /// The TCP port the server listens on.
    pub tcp_port: u16,
    /// Seconds since the server started.
    pub uptime_secs: u64,
    /// CPU seconds spent in user mode.
    pub used_cpu_user: f64,
    /// CPU seconds spent in the kernel.
    pub used_cpu_sys: f64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
    /// The allocator and its version (`INFO`'s `mem_allocator`); empty:
    /// the system's.
    pub allocator: &'static str,
}

/// `INFO`'s `# Server` section, the same at both nodes.
pub fn server_section(out: &mut String, role: Role, host: &HostFacts) {
    use std::fmt::Write;
    let _ = write!(
        out,
        "# Server\nredis_version:{REDIS_VERSION}\nkv_version:{}\nredis_mode:standalone\nkv_role:{}\nos:{}\narch_bits:{}\nprocess_id:{}\ntcp_port:{}\nuptime_in_seconds:{}\n",
        env!("CARGO_PKG_VERSION"),
        role.name(),
        std::env::consts::OS,
        usize::BITS,
        host.process_id,
        host.tcp_port,
        host.uptime_secs,
    );
}

/// `INFO`'s `# Replication` (a node that is no replica: Redis's `master`)
/// and `# CPU` sections, the same at both nodes.
pub fn replication_and_cpu(out: &mut String, sections: &InfoSections, host: &HostFacts) {
    use std::fmt::Write;
    if sections.wants("replication") {
        out.push_str("# Replication\nrole:master\nconnected_slaves:0\nmaster_repl_offset:0\n");
    }
    if sections.wants("cpu") {
        let _ = write!(
            out,
            "# CPU\nused_cpu_sys:{:.6}\nused_cpu_user:{:.6}\nused_cpu_sys_children:0.000000\nused_cpu_user_children:0.000000\n",
            host.used_cpu_sys, host.used_cpu_user
        );
    }
}

/// What a [`LocalHandler`](crate::command::table::LocalHandler) works with.
pub struct Local<'a> {
    /// The connection's session, which the handler may change.
    pub session: &'a mut Session,
    /// The node that answers.
    pub node: &'a mut dyn Node,
}
