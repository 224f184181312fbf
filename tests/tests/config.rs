//! Settings from `KV_…` environment variables and from `--config FILE`, on
//! the real binary: a password from the environment is required and stays
//! out of the process list; a file sets what the flags set; the command
//! line beats the environment, which beats the file; a bad file is refused
//! naming its line; a failed bind says its OS error once.

use kv_tests::{
    kv_bin, resp_command, run_kv, scratch_dir, start_server, Announcer, Conn, STARTUP_TIMEOUT,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const NOAUTH: &str = "-NOAUTH Authentication required.";

/// A `kv server` or `kv proxy` started with the given environment (and no
/// other `KV_…` variable of the test's own, so that the test's environment
/// cannot change what it checks); killed and reaped when dropped.
struct EnvKv {
    child: Child,
    cwd: PathBuf,
    addr: SocketAddr,
}

impl EnvKv {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> EnvKv {
        let cwd = scratch_dir("config-cwd");
        let stderr_path = cwd.join("stderr.txt");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut cmd = Command::new(kv_bin());
        cmd.args(args)
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("KV_") {
                cmd.env_remove(name);
            }
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd.spawn().expect("kv starts");
        let announced = Announcer::start(&mut child);
        match announced.wait(1, STARTUP_TIMEOUT) {
            Ok(listening) => EnvKv {
                addr: listening.addr().expect("an address"),
                child,
                cwd,
            },
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!("kv {args:?} with {env:?}: {e}\n--- stderr ---\n{stderr}");
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for EnvKv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.cwd);
    }
}

/// Writes `text` as `kv.toml` in a new scratch directory.
fn config_file(text: &str) -> PathBuf {
    let path = scratch_dir("config").join("kv.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

/// `CONFIG GET name`'s value (RESP2: an array of the name and the value).
fn config_get(c: &mut Conn, name: &str) -> String {
    c.send(&resp_command(&[b"CONFIG", b"GET", name.as_bytes()]));
    let lines: Vec<String> = (0..5).map(|_| c.read_line()).collect();
    let head = ["*2".to_owned(), format!("${}", name.len()), name.to_owned()];
    assert_eq!(lines[..3], head, "{lines:?}");
    lines[4].clone()
}

#[test]
fn a_password_from_the_environment_is_required_and_not_in_the_process_list() {
    let password = "pw-from-the-env-7f3a";
    let server = EnvKv::spawn(
        &["server", "--listen", "127.0.0.1:0"],
        &[("KV_REQUIREPASS", password), ("KV_IN_MEMORY", "1")],
    );
    // What `ps` shows: the process's arguments.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", server.pid())).unwrap();
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(args.iter().any(|a| a == "server"), "{args:?}");
    assert!(!args.iter().any(|a| a.contains(password)), "{args:?}");

    let mut c = Conn::connect(server.addr);
    assert_eq!(c.resp(&[b"GET", b"k"]), [NOAUTH]);
    assert_eq!(c.resp(&[b"SET", b"k", b"v"]), [NOAUTH]);
    assert_eq!(c.resp(&[b"AUTH", password.as_bytes()]), ["+OK"]);
    assert_eq!(c.resp(&[b"SET", b"k", b"v"]), ["+OK"]);
    assert_eq!(c.resp(&[b"GET", b"k"]), ["$1", "v"]);

    // KV_IN_MEMORY=1 turned the switch on: no log.
    assert_eq!(config_get(&mut c, "appendonly"), "no");
}

#[test]
fn a_config_file_sets_what_the_flags_set() {
    let data = scratch_dir("config-data");
    let file = config_file(&format!(
        r#"# The command line's --listen overrides this unusable port.
[server]
listen = "127.0.0.1:1"
data-dir = "{}"
fsync = "always"
requirepass = "pw-from-file"
inline-replies = "resp"
max-value = "1MiB"
idle-timeout = "10m"
"#,
        data.display()
    ));
    let server = EnvKv::spawn(
        &["server", "--config", arg(&file), "--listen", "127.0.0.1:0"],
        &[],
    );
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", server.pid())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("pw-from-file"));

    let mut c = Conn::connect(server.addr);
    // inline-replies = "resp": inline commands get RESP replies at once.
    assert_eq!(c.cmd("PING"), "+PONG");
    assert_eq!(c.cmd("GET k"), NOAUTH);
    assert_eq!(c.cmd("AUTH pw-from-file"), "+OK");
    assert_eq!(c.cmd("SET k v"), "+OK");
    c.send_line("CONFIG GET appendfsync proto-max-bulk-len");
    let reply: Vec<String> = (0..9).map(|_| c.read_line()).collect();
    assert_eq!(
        reply,
        [
            "*4",
            "$11",
            "appendfsync",
            "$6",
            "always",
            "$18",
            "proto-max-bulk-len",
            "$7",
            "1048576"
        ]
    );
    // The log is in the file's data-dir (with fsync always, the write is
    // on disk before its +OK).
    let logged: u64 = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(logged > 0, "nothing written under {}", data.display());
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn the_command_line_beats_the_environment_which_beats_the_file() {
    let file = config_file("[server]\nin-memory = true\nmax-value = \"1MiB\"\n");
    let base = ["server", "--config", arg(&file), "--listen", "127.0.0.1:0"];
    let max_value = |extra: &[&str], env: &[(&str, &str)]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let server = EnvKv::spawn(&args, env);
        let mut c = Conn::connect(server.addr);
        config_get(&mut c, "proto-max-bulk-len")
    };
    assert_eq!(max_value(&[], &[]), "1048576");
    assert_eq!(max_value(&[], &[("KV_MAX_VALUE", "2MiB")]), "2097152");
    assert_eq!(
        max_value(&["--max-value", "3MiB"], &[("KV_MAX_VALUE", "2MiB")]),
        "3145728"
    );
    // The file itself can come from the environment.
    let server = EnvKv::spawn(
        &["server", "--listen", "127.0.0.1:0"],
        &[("KV_CONFIG", arg(&file))],
    );
    let mut c = Conn::connect(server.addr);
    assert_eq!(config_get(&mut c, "proto-max-bulk-len"), "1048576");
    assert_eq!(config_get(&mut c, "appendonly"), "no");
}

#[test]
fn a_proxy_takes_its_upstream_and_passwords_from_a_file() {
    let server = EnvKv::spawn(
        &["server", "--listen", "127.0.0.1:0", "--in-memory"],
        &[("KV_REQUIREPASS", "server-pw")],
    );
    let file = config_file(&format!(
        r#"[server]
fsync = "no"

[proxy]
listen = "127.0.0.1:0"
upstream = "{}"
upstream-password = "server-pw"
requirepass = "proxy-pw"
cache-ttl = "0s"
allow-origin = ["http://localhost:3000", "http://localhost:3001"]
"#,
        server.addr
    ));
    let proxy = EnvKv::spawn(&["proxy", "--config", arg(&file)], &[]);
    let mut c = Conn::connect(proxy.addr);
    assert_eq!(c.cmd("GET k"), "(error) NOAUTH Authentication required.");
    assert_eq!(c.cmd("AUTH proxy-pw"), "OK");
    assert_eq!(c.cmd("PUT k through the proxy"), "OK");
    // The write reached the server: the proxy authenticated upstream.
    let mut direct = Conn::connect(server.addr);
    assert_eq!(direct.cmd("AUTH server-pw"), "OK");
    assert_eq!(direct.cmd("GET k"), "\"through the proxy\"");
}

#[test]
fn a_bad_file_is_refused_naming_the_key_and_its_line() {
    let t = Duration::from_secs(20);
    let cases = [
        (
            "[server]\nin-memory = true\nlisen = \"127.0.0.1:0\"\n",
            "line 3: unknown key 'lisen' in [server]",
        ),
        (
            "[server]\nin-memory = true\n\n[proxy]\ncache-tll = \"1s\"\n",
            "line 5: unknown key 'cache-tll' in [proxy]",
        ),
        (
            "[server]\n# idle clients\nidle-timeout = \"soon\"\n",
            "line 3: invalid value 'soon' for 'idle-timeout': \
             expected number at 0 (expected e.g. 60s, 500ms, 5m)",
        ),
        (
            "[server]\nrepair = \"yes\"\n",
            "line 2: 'repair' is a switch: true or false",
        ),
    ];
    for (text, problem) in cases {
        let file = config_file(text);
        let out = run_kv(["server", "--config", arg(&file)], t);
        assert_eq!(
            (out.code(), out.stderr.as_str()),
            (
                Some(2),
                format!("error: {}, {problem}\n", file.display()).as_str()
            ),
            "{text}"
        );
        assert!(!out.stdout.contains("listening"), "{}", out.stdout);
    }
}

#[test]
fn a_failed_bind_says_its_os_error_once() {
    let taken = start_server(&["--in-memory"]);
    let addr = taken.server_addr().to_string();
    let t = Duration::from_secs(20);
    let out = run_kv(["server", "--in-memory", "--listen", &addr], t);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    let error: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(
        error,
        [format!(
            "error: server cannot listen on {addr}: Address already in use (os error 98)"
        )],
        "{}",
        out.stderr
    );
    // The console's socket is bound by another path; it says it once too.
    let out = run_kv(
        [
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &addr,
            "--http",
            &addr,
        ],
        t,
    );
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert_eq!(out.stderr.matches("Address already in use").count(), 1);
    assert!(
        out.stderr
            .contains(&format!("error: console cannot listen on {addr}: ")),
        "{}",
        out.stderr
    );
}
