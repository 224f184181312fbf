//! Command-line arguments of the `kv` binary, and their translation into the
//! settings of the drivers and the core.
//!
//! A flag's value comes from, first to last: the command line, its
//! environment variable (`KV_` and the flag's long name in upper snake
//! case: `--cache-ttl` is `KV_CACHE_TTL`), the `--config` file
//! ([`crate::config`]), the flag's default. [`parse_from`] reads all of
//! them; the variables' names are derived from the flags in [`command`],
//! so a new flag has its variable and its config key with no code.

use crate::config::{ConfigError, ConfigFile};
use crate::persist::{FsyncPolicy, PersistOptions};
use crate::proxy::ProxyOptions;
use crate::server::ServerOptions;
use bytes::Bytes;
use clap::builder::{BoolishValueParser, PossibleValuesParser, TypedValueParser};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, Args, Command, CommandFactory, FromArgMatches, Parser, Subcommand};
use kv_core::auth::Password;
use kv_core::db::Policy;
use kv_core::server::memory::{parse_memory, MAX_SAMPLES};
use kv_core::server::MaxMemory;
use kv_core::{CacheConfig, Limits, OutputLimit, ProxyConfig};
use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// Why the command line, the environment or the config file could not be
/// read.
#[derive(Debug, Error)]
pub enum ArgsError {
    /// clap's own error, `--help` and `--version` included:
    /// [`clap::Error::exit`] prints it as clap does.
    #[error(transparent)]
    Clap(#[from] clap::Error),
    /// The `--config` file was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The `kv` command with every long flag also read from its environment
/// variable ([`env_var`]). Values from the environment are not shown in
/// `--help`, as some are passwords.
pub fn command() -> Command {
    KvArgs::command()
        .mut_args(with_env)
        .mut_subcommands(|sub| sub.mut_args(with_env))
}

/// The environment variable of the flag `--long`: `KV_` and the name in
/// upper snake case (`--upstream-password` is `KV_UPSTREAM_PASSWORD`).
/// Subcommands share the variables of the flags they share (`KV_LISTEN`).
pub fn env_var(long: &str) -> String {
    format!("KV_{}", long.to_ascii_uppercase().replace('-', "_"))
}

fn with_env(arg: Arg) -> Arg {
    let Some(long) = arg.get_long() else {
        return arg;
    };
    if arg.get_env().is_some() {
        return arg;
    }
    let name = env_var(long);
    if !matches!(arg.get_action(), ArgAction::SetTrue) {
        return arg.env(name).hide_env_values(true);
    }
    // clap reads a switch's variable as `true`/`false` only; `1`, `yes`
    // and `on` are what people write in an environment file.
    let arg = arg.value_parser(BoolishValueParser::new());
    // clap counts a switch's variable as given even when it says false, so
    // `KV_IN_MEMORY=0` would conflict with `--data-dir` (and drop the
    // file's `data-dir`): a false one is left out, as the switch's absence.
    match std::env::var(&name) {
        Ok(value) if is_false(&value) => arg,
        _ => arg.env(name).hide_env_values(true),
    }
}

/// What [`BoolishValueParser`] reads as false.
fn is_false(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "n" | "no" | "f" | "false" | "off" | "0"
    )
}

/// Parses `argv` (the program's name first) with the environment and the
/// `--config` file.
///
/// The command line is parsed once without the file, to find the file and
/// which flags were given explicitly (on the command line or in the
/// environment); the file's settings for the subcommand then become the
/// other flags' defaults, and the command line is parsed again.
///
/// # Errors
///
/// clap's errors (a bad flag, `--help`), and a refused config file.
pub fn parse_from<I, T>(argv: I) -> Result<KvArgs, ArgsError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let cmd = command();
    let matches = cmd.clone().try_get_matches_from(&argv)?;
    let (Some(path), Some((sub, sub_matches))) =
        (matches.get_one::<PathBuf>("config"), matches.subcommand())
    else {
        return checked(KvArgs::from_arg_matches(&matches)?);
    };
    let file = ConfigFile::load(path, &cmd)?;
    let explicit = |id: &str| {
        matches!(
            sub_matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    let cmd = file.apply(cmd, sub, explicit)?;
    let mut matches = cmd.try_get_matches_from(&argv)?;
    checked(KvArgs::from_arg_matches_mut(&mut matches)?)
}

/// The arguments, once the checks across flags that clap cannot make
/// pass: a refusal is a usage error, printed as clap prints its own.
fn checked(args: KvArgs) -> Result<KvArgs, ArgsError> {
    let problem = match &args.command {
        KvCommand::Proxy(p) => p.check().err().map(|e| ("proxy", e)),
        _ => None,
    };
    let Some((sub, message)) = problem else {
        return Ok(args);
    };
    let mut cmd = command();
    let kind = clap::error::ErrorKind::MissingRequiredArgument;
    Err(match cmd.find_subcommand_mut(sub) {
        Some(sub) => sub.error(kind, message),
        None => cmd.error(kind, message),
    }
    .into())
}

/// The `kv` command line.
#[derive(Debug, Parser)]
#[command(
    name = "kv",
    version,
    about = "A small key-value store with a caching proxy, speaking telnet lines and RESP2"
)]
pub struct KvArgs {
    /// Read settings from this TOML file: a section per subcommand
    /// (`[server]`, `[proxy]`, `[up]`, `[cli]`), keys named as the long
    /// flags. The environment and the command line override it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to run.
    #[command(subcommand)]
    pub command: KvCommand,
}

/// The subcommands of `kv`.
#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Run the key-value server.
    Server(ServerArgs),
    /// Run the caching proxy in front of a server.
    Proxy(ProxyArgs),
    /// Send one command (given as arguments) or open an interactive prompt.
    Cli(CliArgs),
    /// Run a server and a proxy in front of it, in one process.
    Up(UpArgs),
}

/// Input limits, shared by the server and the proxy. The defaults are
/// Redis's (see `kv_core::Limits`), so that what works against Redis works
/// here; a test keeps them equal to `Limits::default()`.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Longest inline (telnet) request line, and longest RESP `*`/`$`
    /// header line, in bytes, as Redis's fixed 64 KiB. Longer closes the
    /// connection with Redis's protocol error.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "64KiB")]
    pub max_line: usize,
    /// Longest key, in bytes. Redis bounds keys only as it bounds any
    /// argument (proto-max-bulk-len), hence the same default as
    /// --max-value.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "512MiB")]
    pub max_key: usize,
    /// Longest value, in bytes: Redis's proto-max-bulk-len. A RESP bulk
    /// string longer than both this and --max-key is refused as soon as its
    /// length is read, before its bytes are, and the connection closed.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "512MiB")]
    pub max_value: usize,
    /// Most arguments in one request (RESP array elements or inline
    /// words), the command name included.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_args)]
    pub max_args: usize,
}

impl LimitArgs {
    /// The limits for the core.
    pub fn limits(&self) -> Limits {
        Limits {
            max_line: self.max_line,
            max_key: self.max_key,
            max_value: self.max_value,
            max_args: self.max_args,
        }
    }
}

/// Connection management, shared by the server and the proxy.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// Most concurrent client connections; more are refused with an error.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_clients: usize,
    /// Close a client that sends nothing for this long (e.g. 300s, 5m; 0 = never).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "300s")]
    pub idle_timeout: Duration,
    /// How inline (telnet) commands are answered: `human` (kv's readable
    /// lines, until the connection speaks RESP or HELLO) or `resp` (as
    /// Redis answers them, for Redis tools that send inline commands).
    #[arg(long, value_enum, value_name = "FORM", default_value = "human")]
    pub inline_replies: InlineRepliesArg,
    /// Redis's client-output-buffer-limit, as "HARD SOFT SECONDS": a client
    /// for which more than HARD bytes of replies are held (encoded and not
    /// yet sent, or a streamed DUMP's snapshot), or more than SOFT for
    /// SECONDS, is disconnected and counted (0 turns a limit off).
    #[arg(long, value_name = "HARD SOFT SECONDS", value_parser = parse_output_limit, default_value = "256MiB 64MiB 60")]
    pub client_output_buffer_limit: OutputLimit,
}

/// `--inline-replies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InlineRepliesArg {
    /// kv's human-readable lines.
    Human,
    /// RESP, as Redis.
    Resp,
}

impl From<InlineRepliesArg> for kv_core::server::InlineReplies {
    fn from(a: InlineRepliesArg) -> Self {
        match a {
            InlineRepliesArg::Human => kv_core::server::InlineReplies::Human,
            InlineRepliesArg::Resp => kv_core::server::InlineReplies::Resp,
        }
    }
}

impl ConnArgs {
    /// The idle timeout, `None` if disabled.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (!self.idle_timeout.is_zero()).then_some(self.idle_timeout)
    }
}

/// Persistence of the server: the append-only log.
#[derive(Debug, Clone, Args)]
pub struct PersistArgs {
    /// Directory of the append-only log (created if missing; relative to the
    /// current directory).
    #[arg(long, value_name = "DIR", default_value = "kv-data")]
    pub data_dir: PathBuf,
    /// Keep the data in memory only: no log is read or written.
    #[arg(long, conflicts_with_all = ["data_dir", "fsync", "repair", "aof_rewrite_min_size", "aof_rewrite_percentage"])]
    pub in_memory: bool,
    /// When the log is synced to disk: `always` (before each write is
    /// acknowledged), `everysec` (once a second) or `no` (left to the OS).
    #[arg(long, value_enum, value_name = "POLICY", default_value = "everysec")]
    pub fsync: FsyncPolicy,
    /// Start even if the log is damaged before its last record, truncating
    /// it at the damage (the records after it are lost).
    #[arg(long)]
    pub repair: bool,
    /// Do not rewrite (compact) the log while it is smaller than this.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "64MiB")]
    pub aof_rewrite_min_size: usize,
    /// Rewrite the log once it has grown by this percentage over its size
    /// after the last rewrite (0 = never).
    #[arg(long, value_name = "PERCENT", default_value_t = 100)]
    pub aof_rewrite_percentage: u64,
}

impl PersistArgs {
    /// The log's settings; `None` with `--in-memory`.
    pub fn options(&self) -> Option<PersistOptions> {
        (!self.in_memory).then(|| PersistOptions {
            data_dir: self.data_dir.clone(),
            fsync: self.fsync,
            repair: self.repair,
            rewrite_min_size: self.aof_rewrite_min_size as u64,
            rewrite_percentage: self.aof_rewrite_percentage,
        })
    }
}

/// Cache and upstream settings of the proxy.
#[derive(Debug, Clone, Args)]
pub struct CacheArgs {
    /// How long a cached value is served (e.g. 60s, 500ms; 0 disables the cache).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
    pub cache_ttl: Duration,
    /// Most entries in the cache.
    #[arg(long, value_name = "ENTRIES", default_value_t = CacheConfig::default().max_entries)]
    pub cache_capacity: usize,
    /// Most bytes held by the cache (keys, values and overhead).
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value_t = CacheConfig::default().max_bytes)]
    pub cache_max_bytes: usize,
    /// Do not cache missing keys (negative caching is on by default).
    #[arg(long)]
    pub no_negative_cache: bool,
    /// How long a request may wait for the server before it fails.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration, default_value = "5s")]
    pub request_timeout: Duration,
    /// Server-assisted invalidation: `on` asks the server to track what the
    /// proxy reads (`HELLO 3`, `CLIENT TRACKING ON`) and drops a cached key
    /// as soon as the server says it changed; `off` caches by --cache-ttl
    /// alone. A server that refuses gets TTL-only caching, with a warning.
    #[arg(long, value_enum, value_name = "on|off", default_value = "on")]
    pub tracking: TrackingArg,
    /// Most dedicated upstream connections at once: a client that
    /// subscribes, starts a transaction, watches keys or turns replies off
    /// gets a connection to the server of its own for as long as it stays
    /// (its reads then bypass the cache); past the bound such a command is
    /// refused, naming it. 0: always refused.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_dedicated: usize,
}

/// `--tracking`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TrackingArg {
    /// The server invalidates what the proxy caches.
    On,
    /// The cache's TTL alone.
    Off,
}

impl CacheArgs {
    /// The proxy core's settings.
    pub fn proxy_config(&self, limits: Limits, hash_seed: u64) -> ProxyConfig {
        ProxyConfig {
            limits,
            cache: CacheConfig {
                ttl: self.cache_ttl,
                max_entries: self.cache_capacity,
                max_bytes: self.cache_max_bytes,
                negative: !self.no_negative_cache,
            },
            request_timeout: self.request_timeout,
            hash_seed,
            tracking: self.tracking == TrackingArg::On,
            max_dedicated: self.max_dedicated,
            ..ProxyConfig::default()
        }
    }
}

/// The server's memory bound, with Redis's settings (and `CONFIG SET`
/// changes them while it runs).
#[derive(Debug, Clone, Args)]
pub struct MemoryArgs {
    /// Bound on used memory (the allocator's count of allocated bytes), in
    /// Redis's units: `100mb`, `1gb` (powers of 1024), `100m`, `1g` (of
    /// 1000) or bytes; 0 = none. Over it, keys are evicted by
    /// --maxmemory-policy, or, when none may be, writes are refused.
    #[arg(long, value_name = "BYTES", value_parser = parse_maxmemory, default_value = "0")]
    pub maxmemory: u64,
    /// What goes when memory is over --maxmemory: nothing (`noeviction`:
    /// writes get Redis's OOM error), any key (`allkeys-lru`, `-lfu`,
    /// `-random`), or only keys with a time to live (`volatile-lru`,
    /// `-lfu`, `-random`, `-ttl`).
    #[arg(
        long,
        value_name = "POLICY",
        ignore_case = true,
        value_parser = PossibleValuesParser::new(Policy::ALL.map(Policy::name))
            .map(|name| Policy::parse(name.as_bytes()).unwrap_or_default()),
        default_value = "noeviction"
    )]
    pub maxmemory_policy: Policy,
    /// Keys sampled per eviction by the LRU and LFU policies: more is
    /// closer to true LRU/LFU, and slower.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=MAX_SAMPLES as i64), default_value_t = 5)]
    pub maxmemory_samples: u16,
}

impl MemoryArgs {
    /// The core's settings.
    pub fn bound(&self) -> MaxMemory {
        MaxMemory {
            bytes: self.maxmemory,
            policy: self.maxmemory_policy,
            samples: usize::from(self.maxmemory_samples),
        }
    }
}

/// Parses `--maxmemory` as Redis reads a memory value.
pub fn parse_maxmemory(s: &str) -> Result<u64, String> {
    parse_memory(s.trim().as_bytes())
        .ok_or_else(|| format!("invalid memory value '{s}' (expected e.g. 100mb, 1gb or 100000)"))
}

/// `kv server`.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Persistence.
    #[command(flatten)]
    pub persist: PersistArgs,
    /// Connection management.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Input limits.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Authentication.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// The memory bound.
    #[command(flatten)]
    pub memory: MemoryArgs,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (off unless given;
    /// `--http` is the same, the server's HTTP listener serving only that).
    #[arg(long, visible_alias = "http", value_name = "ADDR", value_parser = parse_addr)]
    pub metrics: Option<SocketAddr>,
    /// Redis's client-output-buffer-limit for subscribers ("pubsub"
    /// class), as "HARD SOFT SECONDS": a client with subscriptions that
    /// does not read its messages is disconnected at it.
    #[arg(long, value_name = "HARD SOFT SECONDS", value_parser = parse_output_limit, default_value = "32MiB 8MiB 60")]
    pub pubsub_output_buffer_limit: OutputLimit,
}

impl ServerArgs {
    /// The server driver's settings.
    pub fn options(&self, hash_seed: u64) -> ServerOptions {
        ServerOptions {
            listen: self.listen,
            max_clients: self.conn.max_clients,
            idle_timeout: self.conn.idle_timeout(),
            output_limit: self.conn.client_output_buffer_limit,
            limits: self.limits.limits(),
            hash_seed,
            persistence: self.persist.options(),
            password: self.auth.password(),
            inline_replies: self.conn.inline_replies.into(),
            metrics: self.metrics,
            maxmemory: self.memory.bound(),
            pubsub_output_limit: self.pubsub_output_buffer_limit,
        }
    }
}

/// Password authentication for clients.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// Require clients to send `AUTH <password>` before anything but
    /// AUTH, PING, QUIT and HELP.
    #[arg(long, value_name = "PASSWORD", conflicts_with = "requirepass_file")]
    pub requirepass: Option<String>,
    /// Like --requirepass, reading the password from the first line of a
    /// file, so that it does not show in the process list.
    #[arg(long, value_name = "FILE", value_parser = read_password_file)]
    pub requirepass_file: Option<String>,
}

impl AuthArgs {
    /// The password clients must give, if any.
    pub fn password(&self) -> Option<Password> {
        self.requirepass
            .as_ref()
            .or(self.requirepass_file.as_ref())
            .map(|p| Password::new(p.clone().into_bytes()))
    }
}

/// Reads a password from the first line of a file.
pub fn read_password_file(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err(format!("{path} holds no password on its first line"));
    }
    Ok(line.to_owned())
}

/// The console page and its WebSocket bridge.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Extra origin allowed to open the WebSocket besides the page's own
    /// (repeatable), e.g. `http://localhost:3000`.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origin: Vec<String>,
    /// Folder to serve the console page from instead of the copy built into
    /// `kv`, read on every request (for developing the page).
    #[arg(long, value_name = "DIR")]
    pub www: Option<std::path::PathBuf>,
}

impl HttpArgs {
    /// The bridge's settings for a given listening address.
    pub fn options(&self, listen: SocketAddr, conn: &ConnArgs) -> crate::proxy::ws::HttpOptions {
        crate::proxy::ws::HttpOptions {
            listen,
            www_dir: self.www.clone().or_else(crate::proxy::ws::default_www_dir),
            allowed_origins: self.allow_origin.clone(),
            max_clients: conn.max_clients,
            idle_timeout: conn.idle_timeout(),
            output_limit: conn.client_output_buffer_limit,
        }
    }
}

/// `kv proxy`.
#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr, default_value = "127.0.0.1:7071")]
    pub listen: SocketAddr,
    /// Address of the server to forward to.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr, default_value = "127.0.0.1:7070")]
    pub upstream: SocketAddr,
    /// Forward to a Redis Cluster instead of one server: some of its
    /// nodes, comma-separated; the slot map is read from them, and each
    /// command goes to its keys' master.
    #[arg(long, value_name = "ADDR[,ADDR…]", value_delimiter = ',', value_parser = parse_addr)]
    pub upstream_cluster: Vec<SocketAddr>,
    /// Serve the browser console and its WebSocket on this address (off
    /// unless given).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub http: Option<SocketAddr>,
    /// Console settings.
    #[command(flatten)]
    pub web: HttpArgs,
    /// Cache and upstream settings.
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Connection management.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Input limits.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Authentication of clients (the proxy answers AUTH itself).
    #[command(flatten)]
    pub auth: AuthArgs,
    /// User the proxy authenticates as on each upstream connection
    /// (`AUTH USER PASSWORD`, a Redis 6+ ACL user); without it, the
    /// password is the default user's (`AUTH PASSWORD`). Needs
    /// --upstream-password or --upstream-password-file.
    #[arg(long, value_name = "USER")]
    pub upstream_user: Option<String>,
    /// Password the proxy sends the server (`AUTH`) on each connection.
    #[arg(
        long,
        value_name = "PASSWORD",
        conflicts_with = "upstream_password_file"
    )]
    pub upstream_password: Option<String>,
    /// Like --upstream-password, read from the first line of a file.
    #[arg(long, value_name = "FILE", value_parser = read_password_file)]
    pub upstream_password_file: Option<String>,
    /// Also serve Prometheus metrics at `http://ADDR/metrics` (the console's
    /// listener, `--http`, serves them too).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub metrics: Option<SocketAddr>,
}

impl ProxyArgs {
    /// What clap cannot check, as settings may come from the config file
    /// (its values are defaults, which clap's `requires` ignores).
    ///
    /// # Errors
    ///
    /// What is wrong, as the message to print.
    pub fn check(&self) -> Result<(), String> {
        let password = self.upstream_password.is_some() || self.upstream_password_file.is_some();
        if self.upstream_user.is_some() && !password {
            return Err("--upstream-user needs the user's password: give --upstream-password or --upstream-password-file too (upstream-password in the config file)".to_owned());
        }
        Ok(())
    }

    /// The proxy driver's settings.
    pub fn options(&self, hash_seed: u64) -> ProxyOptions {
        ProxyOptions {
            listen: self.listen,
            upstream: self.upstream,
            upstream_cluster: cluster_seeds(&self.upstream_cluster),
            max_clients: self.conn.max_clients,
            idle_timeout: self.conn.idle_timeout(),
            output_limit: self.conn.client_output_buffer_limit,
            proxy: ProxyConfig {
                password: self.auth.password(),
                output_limit: self.conn.client_output_buffer_limit,
                upstream_password: self
                    .upstream_password
                    .as_ref()
                    .or(self.upstream_password_file.as_ref())
                    .map(|p| Password::new(p.clone().into_bytes())),
                upstream_user: self
                    .upstream_user
                    .as_ref()
                    .map(|u| Bytes::from(u.clone().into_bytes())),
                inline_replies: self.conn.inline_replies.into(),
                ..self.cache.proxy_config(self.limits.limits(), hash_seed)
            },
            http: self.http.map(|addr| self.web.options(addr, &self.conn)),
            metrics: self.metrics,
        }
    }
}

/// `--upstream-cluster`'s addresses as the proxy driver takes them; none
/// given: no cluster.
fn cluster_seeds(addrs: &[SocketAddr]) -> Option<Vec<String>> {
    (!addrs.is_empty()).then(|| addrs.iter().map(SocketAddr::to_string).collect())
}

/// `kv up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Address the server listens on (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr, default_value = "127.0.0.1:7070")]
    pub server_listen: SocketAddr,
    /// Address the proxy listens on (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr, default_value = "127.0.0.1:7071")]
    pub proxy_listen: SocketAddr,
    /// Address of the browser console and its WebSocket.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr, default_value = "127.0.0.1:7080")]
    pub http: SocketAddr,
    /// Do not serve the browser console.
    #[arg(long)]
    pub no_http: bool,
    /// Persistence of the server.
    #[command(flatten)]
    pub persist: PersistArgs,
    /// Console settings.
    #[command(flatten)]
    pub web: HttpArgs,
    /// Cache and upstream settings.
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Connection management.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Input limits.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Authentication: the same password guards the server and the proxy,
    /// and the proxy gives it to the server.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// The server's memory bound.
    #[command(flatten)]
    pub memory: MemoryArgs,
    /// Serve the server's Prometheus metrics at `http://ADDR/metrics` (the
    /// proxy's are at the console's `/metrics`).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub server_metrics: Option<SocketAddr>,
    /// Start no server: put the proxy and the console in front of this
    /// Redis Cluster (some of its nodes, comma-separated), as
    /// `kv proxy --upstream-cluster` does.
    #[arg(long, value_name = "ADDR[,ADDR…]", value_delimiter = ',', value_parser = parse_addr)]
    pub upstream_cluster: Vec<SocketAddr>,
}

impl UpArgs {
    /// The server's settings; the connection and input limits apply to both
    /// sides, with two more clients allowed at the server for the proxy's
    /// own connections (its main and bulk lanes).
    pub fn server_options(&self, hash_seed: u64) -> ServerOptions {
        ServerOptions {
            listen: self.server_listen,
            max_clients: self.conn.max_clients.saturating_add(2),
            idle_timeout: self.conn.idle_timeout(),
            output_limit: self.conn.client_output_buffer_limit,
            limits: self.limits.limits(),
            hash_seed,
            persistence: self.persist.options(),
            password: self.auth.password(),
            inline_replies: self.conn.inline_replies.into(),
            metrics: self.server_metrics,
            maxmemory: self.memory.bound(),
            pubsub_output_limit: kv_core::server::PUBSUB_OUTPUT_LIMIT,
        }
    }

    /// The proxy's settings, forwarding to `upstream` (the server's actual
    /// address).
    pub fn proxy_options(&self, upstream: SocketAddr, hash_seed: u64) -> ProxyOptions {
        let mut options = ProxyOptions {
            listen: self.proxy_listen,
            upstream,
            upstream_cluster: cluster_seeds(&self.upstream_cluster),
            max_clients: self.conn.max_clients,
            idle_timeout: self.conn.idle_timeout(),
            output_limit: self.conn.client_output_buffer_limit,
            proxy: ProxyConfig {
                password: self.auth.password(),
                output_limit: self.conn.client_output_buffer_limit,
                upstream_password: self.auth.password(),
                inline_replies: self.conn.inline_replies.into(),
                ..self.cache.proxy_config(self.limits.limits(), hash_seed)
            },
            http: (!self.no_http).then(|| self.web.options(self.http, &self.conn)),
            metrics: None,
        };
        if options.upstream_cluster.is_some() {
            // The password guards the proxy; the cluster is not kv's own.
            options.proxy.upstream_password = None;
        }
        options
    }
}

/// `kv cli`.
#[derive(Debug, Clone, Args)]
pub struct CliArgs {
    /// Address of the proxy (or server) to talk to.
    #[arg(short, long, value_name = "ADDR", default_value = "127.0.0.1:7071")]
    pub connect: String,
    /// How long to wait for the connection and for each reply.
    #[arg(short, long, value_name = "DURATION", value_parser = parse_positive_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Password to send with `AUTH` right after connecting.
    #[arg(short = 'a', long, value_name = "PASSWORD")]
    pub password: Option<String>,
    /// Speak RESP3 (`HELLO 3` on every new connection), as `redis-cli -3`.
    #[arg(short = '3', long)]
    pub resp3: bool,
    /// A command to send, e.g. `GET name` (none: interactive prompt).
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

/// Parses a duration such as `60s`, `500ms` or `1m 30s`; a bare number is
/// taken as seconds, as Redis writes its timeouts.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 60s, 500ms, 5m)"))
}

/// Like [`parse_duration`], but zero is refused: a request must get some
/// time to be answered.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be more than zero".to_string()),
        d => Ok(d),
    }
}

/// Parses a size in bytes: a plain integer, or one with a binary suffix
/// (`K`/`KiB`, `M`/`MiB`, `G`/`GiB`, any case).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("invalid size '{s}' (expected e.g. 1048576 or 1MiB)"))?;
    let unit: usize = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit '{other}' (use K, M or G)")),
    };
    n.checked_mul(unit)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// Parses `--client-output-buffer-limit`: "HARD SOFT SECONDS", sizes as
/// [`parse_size`] reads them.
pub fn parse_output_limit(s: &str) -> Result<OutputLimit, String> {
    let words: Vec<&str> = s.split_whitespace().collect();
    let [hard, soft, seconds] = words[..] else {
        return Err(format!(
            "invalid output limit '{s}' (expected HARD SOFT SECONDS, e.g. \"256MiB 64MiB 60\")"
        ));
    };
    let seconds: u64 = seconds
        .parse()
        .map_err(|_| format!("invalid seconds '{seconds}' in output limit '{s}'"))?;
    Ok(OutputLimit {
        hard: parse_size(hard)?,
        soft: parse_size(soft)?,
        soft_for: Duration::from_secs(seconds),
    })
}

/// Parses a socket address; host names (`localhost:7070`) are resolved once,
/// here, and the first address is used.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    s.to_socket_addrs()
        .map_err(|e| format!("invalid address '{s}': {e}"))?
        .next()
        .ok_or_else(|| format!("'{s}' resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> KvCommand {
        KvArgs::try_parse_from(std::iter::once("kv").chain(args.iter().copied()))
            .unwrap()
            .command
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("soon").is_err());
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_positive_duration("1ms").is_ok());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("268435456"), Ok(268_435_456));
        assert_eq!(parse_size("256MiB"), Ok(268_435_456));
        assert_eq!(parse_size("64k"), Ok(65_536));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("12parsecs").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr("127.0.0.1:0"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 0)))
        );
        assert!(parse_addr("localhost:7070").is_ok());
        assert!(parse_addr("nonsense").is_err());
    }

    #[test]
    fn defaults_follow_the_contract() {
        let KvCommand::Proxy(p) = parse(&["proxy"]) else {
            panic!("not proxy")
        };
        assert_eq!(p.listen, SocketAddr::from(([127, 0, 0, 1], 7071)));
        assert_eq!(p.upstream, SocketAddr::from(([127, 0, 0, 1], 7070)));
        assert_eq!(p.cache.cache_ttl, Duration::from_secs(60));
        assert_eq!(p.cache.cache_capacity, 1_000_000);
        assert_eq!(p.cache.cache_max_bytes, 256 * 1024 * 1024);
        assert!(!p.cache.no_negative_cache);
        assert_eq!(p.cache.request_timeout, Duration::from_secs(5));
        assert_eq!(p.conn.max_clients, 10_000);
        assert_eq!(p.conn.idle_timeout(), Some(Duration::from_secs(300)));
        assert_eq!(p.limits.limits(), Limits::default());
        let options = p.options(42);
        assert_eq!(options.proxy.hash_seed, 42);
        assert!(options.proxy.cache.negative);
        assert!(options.proxy.tracking);

        let KvCommand::Server(s) = parse(&["server"]) else {
            panic!("not server")
        };
        assert_eq!(s.listen, SocketAddr::from(([127, 0, 0, 1], 7070)));

        let KvCommand::Up(u) = parse(&["up"]) else {
            panic!("not up")
        };
        assert_eq!(u.server_listen.port(), 7070);
        assert_eq!(u.proxy_listen.port(), 7071);

        let KvCommand::Cli(c) = parse(&["cli"]) else {
            panic!("not cli")
        };
        assert_eq!(c.connect, "127.0.0.1:7071");
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert!(c.command.is_empty());
    }

    #[test]
    fn flags_are_applied() {
        let KvCommand::Proxy(p) = parse(&[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--cache-ttl",
            "500ms",
            "--no-negative-cache",
            "--max-value",
            "2MiB",
            "--idle-timeout",
            "0",
            "--max-clients",
            "3",
        ]) else {
            panic!("not proxy")
        };
        let o = p.options(1);
        assert_eq!(o.listen.port(), 0);
        assert_eq!(o.proxy.cache.ttl, Duration::from_millis(500));
        assert!(!o.proxy.cache.negative);
        assert_eq!(o.proxy.limits.max_value, 2 << 20);
        assert_eq!(o.idle_timeout, None);
        assert_eq!(o.max_clients, 3);
    }

    #[test]
    fn persistence_flags() {
        let KvCommand::Server(s) = parse(&["server"]) else {
            panic!("not server")
        };
        let p = s
            .options(0)
            .persistence
            .expect("persistence is on by default");
        assert_eq!(p.data_dir, PathBuf::from("kv-data"));
        assert_eq!(p.fsync, FsyncPolicy::Everysec);
        assert!(!p.repair);
        assert_eq!(p.rewrite_min_size, 64 << 20);
        assert_eq!(p.rewrite_percentage, 100);

        let KvCommand::Server(s) = parse(&[
            "server",
            "--data-dir",
            "/tmp/x",
            "--fsync",
            "always",
            "--repair",
            "--aof-rewrite-min-size",
            "1k",
            "--aof-rewrite-percentage",
            "50",
        ]) else {
            panic!("not server")
        };
        let p = s.options(0).persistence.unwrap();
        assert_eq!(p.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(p.fsync, FsyncPolicy::Always);
        assert!(p.repair);
        assert_eq!((p.rewrite_min_size, p.rewrite_percentage), (1024, 50));

        let KvCommand::Up(u) = parse(&["up", "--in-memory"]) else {
            panic!("not up")
        };
        assert!(u.server_options(0).persistence.is_none());
        let KvCommand::Up(u) = parse(&["up", "--fsync", "no"]) else {
            panic!("not up")
        };
        assert_eq!(
            u.server_options(0).persistence.unwrap().fsync,
            FsyncPolicy::No
        );
        assert!(
            KvArgs::try_parse_from(["kv", "server", "--in-memory", "--fsync", "always"]).is_err()
        );
        assert!(KvArgs::try_parse_from(["kv", "server", "--fsync", "sometimes"]).is_err());
    }

    #[test]
    fn the_memory_bound_reads_redis_units_from_flags_and_the_file() {
        let KvCommand::Server(s) = parse(&["server"]) else {
            panic!("not server")
        };
        assert_eq!(s.options(0).maxmemory, MaxMemory::default());
        let KvCommand::Server(s) = parse(&[
            "server",
            "--maxmemory",
            "100mb",
            "--maxmemory-policy",
            "ALLKEYS-LRU",
            "--maxmemory-samples",
            "10",
        ]) else {
            panic!("not server")
        };
        let want = MaxMemory {
            bytes: 100 << 20,
            policy: Policy::AllKeysLru,
            samples: 10,
        };
        assert_eq!(s.options(0).maxmemory, want);
        let KvCommand::Up(u) = parse(&["up", "--maxmemory", "1g"]) else {
            panic!("not up")
        };
        assert_eq!(u.server_options(0).maxmemory.bytes, 1_000_000_000);
        // The file's values are defaults: the command line wins.
        let toml = "[server]\nmaxmemory = \"1gb\"\nmaxmemory-policy = \"volatile-ttl\"\nmaxmemory-samples = 3\n";
        let o = server_with(toml, &[]).options(0);
        assert_eq!(
            o.maxmemory,
            MaxMemory {
                bytes: 1 << 30,
                policy: Policy::VolatileTtl,
                samples: 3
            }
        );
        let o = server_with(toml, &["--maxmemory", "2k"]).options(0);
        assert_eq!(
            (o.maxmemory.bytes, o.maxmemory.policy),
            (2_000, Policy::VolatileTtl)
        );
        let o = server_with("[server]\nmaxmemory = 100000\n", &[]).options(0);
        assert_eq!(o.maxmemory.bytes, 100_000);
        assert_eq!(
            refused("[server]\nmaxmemory = \"lots\"\n"),
            "kv.toml, line 2: 'maxmemory': invalid memory value 'lots' (expected e.g. 100mb, 1gb or 100000)"
        );
        assert_eq!(
            refused("[server]\nmaxmemory-policy = \"forget\"\n"),
            "kv.toml, line 2: invalid value 'forget' for 'maxmemory-policy': expected volatile-lru, volatile-lfu, \
             volatile-random, volatile-ttl, allkeys-lru, allkeys-lfu, allkeys-random, noeviction"
        );
        for bad in [
            &["--maxmemory-samples", "0"][..],
            &["--maxmemory-samples", "65"],
            &["--maxmemory", "-1"],
            &["--maxmemory-policy", "lru"],
        ] {
            let argv = ["kv", "server"].into_iter().chain(bad.iter().copied());
            assert!(KvArgs::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cli_takes_the_rest_as_the_command() {
        let KvCommand::Cli(c) = parse(&["cli", "-c", "127.0.0.1:1", "PUT", "k", "-5", "--x"])
        else {
            panic!("not cli")
        };
        assert_eq!(c.connect, "127.0.0.1:1");
        assert_eq!(c.command, ["PUT", "k", "-5", "--x"]);
    }

    /// Parses `kv --config FILE ARGS…`, FILE holding `toml`.
    fn with_config(toml: &str, args: &[&str]) -> Result<KvCommand, ArgsError> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("kv-args-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, toml).unwrap();
        let path_arg = path.to_str().unwrap().to_owned();
        let argv = ["kv", "--config", &path_arg]
            .into_iter()
            .chain(args.iter().copied());
        let parsed = parse_from(argv);
        std::fs::remove_file(&path).unwrap();
        parsed.map(|a| a.command)
    }

    fn server_with(toml: &str, args: &[&str]) -> ServerArgs {
        let argv: Vec<&str> = std::iter::once("server")
            .chain(args.iter().copied())
            .collect();
        match with_config(toml, &argv) {
            Ok(KvCommand::Server(s)) => s,
            other => panic!("not a server: {other:?}"),
        }
    }

    fn proxy_with(toml: &str, args: &[&str]) -> ProxyArgs {
        let argv: Vec<&str> = std::iter::once("proxy")
            .chain(args.iter().copied())
            .collect();
        match with_config(toml, &argv) {
            Ok(KvCommand::Proxy(p)) => p,
            other => panic!("not a proxy: {other:?}"),
        }
    }

    /// The error `toml` gets from `kv server`, as printed.
    fn refused(toml: &str) -> String {
        let err = ConfigFile::parse(std::path::Path::new("kv.toml"), toml, &command())
            .and_then(|file| file.apply(command(), "server", |_| false))
            .expect_err("the file should be refused");
        err.to_string()
    }

    #[test]
    fn the_file_sets_an_address() {
        let s = server_with("[server]\nlisten = \"127.0.0.1:9\"\n", &[]);
        assert_eq!(s.listen, SocketAddr::from(([127, 0, 0, 1], 9)));
        let p = proxy_with(
            "[proxy]\nupstream = \"127.0.0.1:8\"\nhttp = \"127.0.0.1:0\"\n",
            &[],
        );
        assert_eq!(p.upstream, SocketAddr::from(([127, 0, 0, 1], 8)));
        assert_eq!(p.http, Some(SocketAddr::from(([127, 0, 0, 1], 0))));
    }

    #[test]
    fn the_file_sets_durations_in_words_or_seconds() {
        let p = proxy_with(
            "[proxy]\ncache-ttl = \"500ms\"\nrequest-timeout = \"1m 30s\"\nidle-timeout = 0\n",
            &[],
        );
        assert_eq!(p.cache.cache_ttl, Duration::from_millis(500));
        assert_eq!(p.cache.request_timeout, Duration::from_secs(90));
        assert_eq!(p.conn.idle_timeout(), None);
        let s = server_with("[server]\nidle-timeout = 7\n", &[]);
        assert_eq!(s.conn.idle_timeout(), Some(Duration::from_secs(7)));
    }

    #[test]
    fn tracking_is_turned_off_by_flag_or_file() {
        let off = |p: ProxyArgs| !p.options(0).proxy.tracking;
        assert!(off(proxy_with("", &["--tracking", "off"])));
        assert!(off(proxy_with("[proxy]\ntracking = \"off\"\n", &[])));
        assert!(!off(proxy_with(
            "[proxy]\ntracking = \"off\"\n",
            &["--tracking", "on"]
        )));
        let KvCommand::Up(up) = parse(&["up", "--tracking", "off"]) else {
            panic!("not up")
        };
        let upstream = SocketAddr::from(([127, 0, 0, 1], 1));
        assert!(!up.proxy_options(upstream, 0).proxy.tracking);
    }

    #[test]
    fn the_file_sets_sizes_and_counts() {
        let s = server_with(
            "[server]\nmax-value = \"2MiB\"\nmax-line = 1024\nmax-clients = 3\naof-rewrite-min-size = \"1k\"\n",
            &[],
        );
        let o = s.options(0);
        assert_eq!(o.limits.max_value, 2 << 20);
        assert_eq!(o.limits.max_line, 1024);
        assert_eq!(o.max_clients, 3);
        assert_eq!(o.persistence.unwrap().rewrite_min_size, 1024);
    }

    #[test]
    fn the_file_sets_switches() {
        let p = proxy_with("[proxy]\nno-negative-cache = true\n", &[]);
        assert!(!p.options(0).proxy.cache.negative);
        let p = proxy_with("[proxy]\nno-negative-cache = false\n", &[]);
        assert!(p.options(0).proxy.cache.negative);
        let s = server_with("[server]\nrepair = true\n", &[]);
        assert!(s.options(0).persistence.unwrap().repair);
        let s = server_with("[server]\nin-memory = true\n", &[]);
        assert!(s.options(0).persistence.is_none());
    }

    #[test]
    fn the_file_sets_choices() {
        let s = server_with(
            "[server]\nfsync = \"always\"\ninline-replies = \"resp\"\n",
            &[],
        );
        let o = s.options(0);
        assert_eq!(o.persistence.unwrap().fsync, FsyncPolicy::Always);
        assert_eq!(o.inline_replies, kv_core::server::InlineReplies::Resp);
    }

    #[test]
    fn the_file_sets_passwords() {
        let s = server_with("[server]\nrequirepass = \"s3cret\"\n", &[]);
        assert_eq!(s.auth.requirepass.as_deref(), Some("s3cret"));
        assert!(s.options(0).password.is_some());
        let p = proxy_with(
            "[proxy]\nrequirepass = \"-starts-with-a-dash\"\nupstream-password = \"up=pw\"\n",
            &[],
        );
        assert_eq!(p.auth.requirepass.as_deref(), Some("-starts-with-a-dash"));
        assert_eq!(p.upstream_password.as_deref(), Some("up=pw"));
        assert!(p.options(0).proxy.upstream_password.is_some());
        assert_eq!(p.options(0).proxy.upstream_user, None);
    }

    #[test]
    fn the_file_or_a_flag_sets_the_upstream_user() {
        let p = proxy_with(
            "[proxy]\nupstream-user = \"alice\"\nupstream-password = \"secret\"\n",
            &[],
        );
        assert_eq!(p.upstream_user.as_deref(), Some("alice"));
        let config = p.options(0).proxy;
        assert_eq!(config.upstream_user.as_deref(), Some(&b"alice"[..]));
        assert_eq!(
            config.upstream_password.as_ref().map(|p| &p.expose()[..]),
            Some(&b"secret"[..])
        );
        // The command line overrides the file's user.
        let p = proxy_with(
            "[proxy]\nupstream-user = \"alice\"\nupstream-password = \"secret\"\n",
            &["--upstream-user", "bob"],
        );
        assert_eq!(p.upstream_user.as_deref(), Some("bob"));
        // With the password from a file.
        let pw = std::env::temp_dir().join(format!("kv-args-{}-user-pw", std::process::id()));
        std::fs::write(&pw, "from-file\n").unwrap();
        let p = proxy_with(
            "",
            &[
                "--upstream-user",
                "carol",
                "--upstream-password-file",
                pw.to_str().unwrap(),
            ],
        );
        std::fs::remove_file(&pw).unwrap();
        assert_eq!(p.upstream_password_file.as_deref(), Some("from-file"));
        assert!(p.options(0).proxy.upstream_user.is_some());
    }

    #[test]
    fn an_upstream_user_without_a_password_is_refused() {
        let message = |r: Result<KvArgs, ArgsError>| match r {
            Err(ArgsError::Clap(e)) => {
                assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
                e.to_string()
            }
            other => panic!("not refused: {other:?}"),
        };
        let flag = message(parse_from(["kv", "proxy", "--upstream-user", "alice"]));
        assert!(
            flag.contains("--upstream-user needs the user's password"),
            "{flag}"
        );
        let toml = "[proxy]\nupstream-user = \"alice\"\n";
        assert!(matches!(
            with_config(toml, &["proxy"]),
            Err(ArgsError::Clap(e)) if e.kind() == clap::error::ErrorKind::MissingRequiredArgument
        ));
        // The password given on the command line completes the file's user.
        let p = proxy_with(toml, &["--upstream-password", "secret"]);
        assert!(p.check().is_ok());
    }

    #[test]
    fn the_file_sets_lists_and_the_command_line_replaces_them() {
        let toml = "[proxy]\nallow-origin = [\"http://a:1\", \"http://b:2\"]\n";
        assert_eq!(
            proxy_with(toml, &[]).web.allow_origin,
            ["http://a:1", "http://b:2"]
        );
        assert_eq!(
            proxy_with(toml, &["--allow-origin", "http://c:3"])
                .web
                .allow_origin,
            ["http://c:3"]
        );
        let one = proxy_with("[proxy]\nallow-origin = \"http://a:1\"\n", &[]);
        assert_eq!(one.web.allow_origin, ["http://a:1"]);
    }

    #[test]
    fn the_file_sets_paths() {
        let s = server_with("[server]\ndata-dir = \"/var/lib/kv\"\n", &[]);
        assert_eq!(
            s.options(0).persistence.unwrap().data_dir,
            PathBuf::from("/var/lib/kv")
        );
        let KvCommand::Up(u) =
            with_config("[up]\nwww = \"/srv/www\"\nno-http = true\n", &["up"]).unwrap()
        else {
            panic!("not up")
        };
        assert_eq!(u.web.www, Some(PathBuf::from("/srv/www")));
        assert!(u.no_http);
    }

    #[test]
    fn the_cli_section_leaves_the_command_to_the_command_line() {
        let toml =
            "[cli]\nconnect = \"127.0.0.1:1\"\ntimeout = \"2s\"\npassword = \"pw\"\nresp3 = true\n";
        let KvCommand::Cli(c) = with_config(toml, &["cli", "GET", "k"]).unwrap() else {
            panic!("not cli")
        };
        assert_eq!(c.connect, "127.0.0.1:1");
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!(c.password.as_deref(), Some("pw"));
        assert!(c.resp3);
        assert_eq!(c.command, ["GET", "k"]);
    }

    #[test]
    fn flags_override_the_file_before_or_after_the_subcommand() {
        let toml = "[server]\nlisten = \"127.0.0.1:9\"\nmax-clients = 5\n";
        let s = server_with(toml, &["--listen", "127.0.0.1:10"]);
        assert_eq!(s.listen.port(), 10);
        assert_eq!(s.conn.max_clients, 5, "the file's other settings stay");
        let path = std::env::temp_dir().join(format!("kv-args-{}-after.toml", std::process::id()));
        std::fs::write(&path, toml).unwrap();
        let parsed = parse_from(["kv", "server", "--config", path.to_str().unwrap()]);
        std::fs::remove_file(&path).unwrap();
        let KvCommand::Server(s) = parsed.unwrap().command else {
            panic!("not server")
        };
        assert_eq!(s.listen.port(), 9);
    }

    #[test]
    fn a_flag_drops_the_file_settings_it_conflicts_with() {
        // The file's persistence settings give way to --in-memory, and its
        // password to --requirepass-file, instead of failing or winning.
        let toml = "[server]\ndata-dir = \"/x\"\nfsync = \"always\"\nrequirepass = \"from-file\"\n";
        let s = server_with(toml, &["--in-memory"]);
        assert!(s.options(0).persistence.is_none());
        let pw = std::env::temp_dir().join(format!("kv-args-{}-pw", std::process::id()));
        std::fs::write(&pw, "from-flag\n").unwrap();
        let s = server_with(toml, &["--requirepass-file", pw.to_str().unwrap()]);
        std::fs::remove_file(&pw).unwrap();
        assert_eq!(s.auth.requirepass, None);
        assert_eq!(s.auth.requirepass_file.as_deref(), Some("from-flag"));
    }

    #[test]
    fn settings_of_the_file_that_conflict_are_refused_with_both_lines() {
        assert_eq!(
            refused("[server]\nfsync = \"always\"\n\nin-memory = true\n"),
            "kv.toml, line 4: 'in-memory' cannot be used with 'fsync' (line 2)"
        );
        // A switch set to false is its absence, and conflicts with nothing.
        let s = server_with("[server]\nfsync = \"no\"\nin-memory = false\n", &[]);
        assert_eq!(s.options(0).persistence.unwrap().fsync, FsyncPolicy::No);
    }

    #[test]
    fn unknown_keys_and_sections_are_refused_with_their_line() {
        assert_eq!(
            refused("[server]\nlisten = \"127.0.0.1:1\"\nlisen = \"127.0.0.1:2\"\n"),
            "kv.toml, line 3: unknown key 'lisen' in [server]"
        );
        // Other sections' keys are checked too, so a typo shows on the
        // first run; their values only when their subcommand runs.
        assert_eq!(
            refused("[server]\n\n[proxy]\ncache-tll = \"1s\"\n"),
            "kv.toml, line 4: unknown key 'cache-tll' in [proxy]"
        );
        let s = server_with("[server]\n[proxy]\ncache-ttl = \"soon\"\n", &[]);
        assert_eq!(s.listen.port(), 7070);
        // A flag of another subcommand is unknown here.
        assert_eq!(
            refused("[server]\nupstream = \"127.0.0.1:1\"\n"),
            "kv.toml, line 2: unknown key 'upstream' in [server]"
        );
        assert_eq!(
            refused("listen = \"127.0.0.1:1\"\n"),
            "kv.toml, line 1: 'listen' is outside any section: settings go under \
             [server], [proxy], [cli], [up]"
        );
        assert_eq!(
            refused("\n[sever]\nlisten = \"127.0.0.1:1\"\n"),
            "kv.toml, line 2: unknown section [sever] (there are [server], [proxy], [cli], [up])"
        );
        // Neither --config nor --help is a setting.
        assert_eq!(
            refused("[server]\nconfig = \"other.toml\"\n"),
            "kv.toml, line 2: unknown key 'config' in [server]"
        );
        assert_eq!(
            refused("[server]\nhelp = true\n"),
            "kv.toml, line 2: unknown key 'help' in [server]"
        );
    }

    #[test]
    fn wrongly_typed_values_are_refused_with_their_line() {
        assert_eq!(
            refused("[server]\nrepair = \"yes\"\n"),
            "kv.toml, line 2: 'repair' is a switch: true or false"
        );
        assert_eq!(
            refused("[server]\nlisten = [\"127.0.0.1:1\"]\n"),
            "kv.toml, line 2: 'listen' takes one value"
        );
        assert_eq!(
            refused("[server]\n# comment\nidle-timeout = \"soon\"\n"),
            "kv.toml, line 3: invalid value 'soon' for 'idle-timeout': \
             expected number at 0 (expected e.g. 60s, 500ms, 5m)"
        );
        assert_eq!(
            refused("[server]\nmax-key = \"9 parsecs\"\n"),
            "kv.toml, line 2: invalid value '9 parsecs' for 'max-key': \
             unknown size unit 'parsecs' (use K, M or G)"
        );
        // A reason that quotes the value already is not given it again.
        assert_eq!(
            refused("[server]\nmax-key = \"lots\"\n"),
            "kv.toml, line 2: 'max-key': invalid size 'lots' (expected e.g. 1048576 or 1MiB)"
        );
        assert_eq!(
            refused("[server]\nfsync = \"sometimes\"\n"),
            "kv.toml, line 2: invalid value 'sometimes' for 'fsync': expected always, everysec, no"
        );
        assert_eq!(
            refused("[server]\nlisten = 7070\n"),
            "kv.toml, line 2: 'listen': invalid address '7070': invalid socket address"
        );
        let err = refused("[server]\nmax-clients = -1\n");
        assert!(
            err.starts_with("kv.toml, line 2: invalid value '-1' for 'max-clients': "),
            "{err}"
        );
        assert_eq!(
            refused("[server]\nlisten = \"127.0.0.1:1\n"),
            "kv.toml, line 2: invalid basic string, expected `\"`"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let missing = std::env::temp_dir().join("kv-args-no-such-file.toml");
        let err = parse_from(["kv", "--config", missing.to_str().unwrap(), "server"])
            .expect_err("no file");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot read {}: No such file or directory (os error 2)",
                missing.display()
            )
        );
    }

    #[test]
    fn every_flag_has_its_environment_variable() {
        assert_eq!(env_var("upstream-password"), "KV_UPSTREAM_PASSWORD");
        assert!(is_false("0") && is_false("Off") && is_false("no"));
        assert!(!is_false("1") && !is_false("yes") && !is_false(""));
        let cmd = command();
        let env_of = |sub: &str, id: &str| {
            let sub = cmd.find_subcommand(sub).unwrap();
            let arg = sub.get_arguments().find(|a| a.get_id() == id).unwrap();
            arg.get_env().map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(
            env_of("server", "requirepass").as_deref(),
            Some("KV_REQUIREPASS")
        );
        assert_eq!(
            env_of("proxy", "upstream_password").as_deref(),
            Some("KV_UPSTREAM_PASSWORD")
        );
        assert_eq!(
            env_of("proxy", "upstream_user").as_deref(),
            Some("KV_UPSTREAM_USER")
        );
        assert_eq!(
            env_of("proxy", "cache_ttl").as_deref(),
            Some("KV_CACHE_TTL")
        );
        assert_eq!(env_of("up", "www").as_deref(), Some("KV_WWW"));
        assert_eq!(env_of("cli", "command"), None, "a positional has none");
        let root = cmd
            .get_arguments()
            .find(|a| a.get_id() == "config")
            .unwrap();
        assert_eq!(root.get_env().unwrap(), "KV_CONFIG");
        for sub in cmd.get_subcommands() {
            for arg in sub.get_arguments() {
                if let Some(long) = arg.get_long() {
                    if std::env::var(env_var(long)).is_ok_and(|v| is_false(&v)) {
                        continue; // a false switch's variable is left out
                    }
                    assert_eq!(
                        arg.get_env().map(|e| e.to_string_lossy().into_owned()),
                        Some(env_var(long)),
                        "{} --{long}",
                        sub.get_name()
                    );
                    assert!(
                        arg.is_hide_env_values_set(),
                        "--{long} would show its value"
                    );
                }
            }
        }
    }

    #[test]
    fn every_flag_has_help() {
        KvArgs::command().debug_assert();
        for sub in KvArgs::command().get_subcommands() {
            assert!(sub.get_about().is_some(), "{} has no about", sub.get_name());
            for arg in sub.get_arguments() {
                assert!(
                    arg.get_help().is_some(),
                    "{} --{} has no help",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
    }
}
