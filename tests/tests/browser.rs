//! The browser console in a real headless Chromium, driven over WebDriver
//! (chromedriver): the page loads the wasm client from `kv up`'s console
//! address, connects its WebSocket, plays the seed transcript typed into
//! `#command`, shows the replies with their badges in `#log`, refuses
//! invalid input without sending it, and notices when `kv up` goes away;
//! a copy of `kv` alone in an empty directory serves the same console from
//! inside the binary; without the wasm the page says how to build it.
//!
//! Needs `chromium` and `chromedriver` (Debian packages; `cargo xtask setup`
//! installs them) and the built console (`cargo xtask build-wasm`).

use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use kv_tests::{
    free_port, http_get, require_tool, scratch_dir, up_args, wait_for, wait_until, workspace_root,
    Conn, KvProcess, SEED_TRANSCRIPT,
};
use serde_json::{json, Value};
use std::fs::File;
use std::future::Future;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::runtime::Runtime;

/// For chromedriver to answer `/status`.
const DRIVER_START: Duration = Duration::from_secs(20);
/// For Chromium to start and the page (and its wasm) to load the first time.
const FIRST_LOAD: Duration = Duration::from_secs(30);
/// For one WebDriver command.
const COMMAND: Duration = Duration::from_secs(15);
/// For a reply to show up in the log, or the state to change.
const PAGE_REACTS: Duration = Duration::from_secs(15);

/// A chromedriver in its own process group, with a scratch folder for
/// Chromium's profile. Dropping it kills the group (chromedriver and the
/// Chromium it started) and removes the folder.
struct Chromedriver {
    child: Child,
    port: u16,
    scratch: PathBuf,
}

impl Chromedriver {
    fn start(program: &Path) -> Chromedriver {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let scratch =
            std::env::temp_dir().join(format!("kv-browser-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(scratch.join("profile"))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", scratch.display()));
        let log = File::create(scratch.join("chromedriver.log")).expect("create the driver log");
        let port = free_port();
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let driver = Chromedriver {
            child,
            port,
            scratch,
        };
        let addr = driver.addr();
        wait_until(DRIVER_START, "chromedriver answers /status", || {
            TcpStream::connect(addr).is_ok() && {
                let status = http_get(addr, "/status");
                status.status == 200 && status.body_text().contains("\"ready\":true")
            }
        });
        driver
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn profile_dir(&self) -> PathBuf {
        self.scratch.join("profile")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let pgid = libc::pid_t::try_from(self.child.id()).expect("pid fits in pid_t");
        // SAFETY: kill(2) on the process group this test created for the
        // driver (its leader is our unreaped child, so the id is not reused).
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// One Chromium at a time: the tests of this file run in parallel threads,
/// and several browsers starting at once on a small machine would each
/// miss their deadlines.
static ONE_BROWSER: Mutex<()> = Mutex::new(());

/// A headless Chromium session, its chromedriver and the runtime that
/// talks to it. End it with [`Browser::close`].
struct Browser {
    rt: Runtime,
    client: Client,
    driver: Chromedriver,
    _turn: MutexGuard<'static, ()>,
}

impl Browser {
    /// Starts chromedriver and a Chromium session; `None` (the test is
    /// skipped, as `require_tool` allows) when either is not installed.
    fn open() -> Option<Browser> {
        let chromium = require_tool("chromium")?;
        let chromedriver = require_tool("chromedriver")?;
        // A test that panicked while holding the turn poisons it; the next
        // one may still run.
        let turn = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
        let driver = Chromedriver::start(&chromedriver);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1000,700",
                    format!("--user-data-dir={}", driver.profile_dir().display()),
                ],
            }),
        );
        let client = run(
            &rt,
            FIRST_LOAD,
            "start a Chromium session",
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&format!("http://{}", driver.addr())),
        );
        Some(Browser {
            rt,
            client,
            driver,
            _turn: turn,
        })
    }

    fn page(&self) -> Page<'_> {
        Page {
            rt: &self.rt,
            client: &self.client,
        }
    }

    /// Loads the console served at `console`.
    fn goto(&self, console: SocketAddr) {
        let url = format!("http://{console}/");
        run(
            &self.rt,
            FIRST_LOAD,
            &format!("load {url}"),
            self.client.goto(&url),
        );
    }

    fn find(&self, css: &str) -> Element {
        run(
            &self.rt,
            COMMAND,
            &format!("find {css}"),
            self.client.find(Locator::Css(css)),
        )
    }

    /// Saves a screenshot of the page as `artifacts/NAME` and prints where.
    fn screenshot(&self, name: &str) -> PathBuf {
        let png = run(
            &self.rt,
            COMMAND,
            "take a screenshot",
            self.client.screenshot(),
        );
        let artifacts = workspace_root().join("artifacts");
        std::fs::create_dir_all(&artifacts)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", artifacts.display()));
        let shot = artifacts.join(name);
        std::fs::write(&shot, &png)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", shot.display()));
        println!("screenshot: {}", shot.display());
        shot
    }

    fn close(self) {
        run(
            &self.rt,
            COMMAND,
            "end the Chromium session",
            self.client.close(),
        );
        drop(self.driver);
    }
}

/// Runs one WebDriver exchange with a deadline.
fn run<T, E: std::fmt::Debug>(
    rt: &Runtime,
    timeout: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> T {
    match rt.block_on(async { tokio::time::timeout(timeout, fut).await }) {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => panic!("WebDriver: {what}: {e:?}"),
        Err(_) => panic!("WebDriver: {what}: no answer within {timeout:?}"),
    }
}

/// One row of `#log`, as the page shows it.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    class: String,
    text: String,
    badge: Option<String>,
    badge_class: Option<String>,
    rtt: Option<String>,
}

const READ_LOG: &str = r#"
    return Array.from(document.querySelectorAll('#log .entry')).map(e => {
        const part = sel => { const el = e.querySelector(sel); return el ? el.textContent : null; };
        const badge = e.querySelector('.badge');
        return {
            class: e.className,
            text: part('.text'),
            badge: part('.badge'),
            badge_class: badge ? badge.className : null,
            rtt: part('.rtt'),
        };
    });
"#;

const ENTRY_COUNT: &str = "return document.querySelectorAll('#log .entry').length;";

/// The requests-per-second chart's caption and its line's path.
const READ_CHART: &str = "const f = document.getElementById('chart-rps'); \
     return [f.querySelector('.now').textContent, f.querySelector('path').getAttribute('d') || ''];";

/// A reply row shows a cache hit: the badge `HIT · <age> old`, styled as one.
fn assert_cache_hit(row: &Row, what: &str) {
    let badge = row.badge.as_deref().unwrap_or_default();
    assert!(
        badge.starts_with("HIT · ") && badge.ends_with(" old"),
        "{what} is a cache hit, badge `HIT · <age> old`: {row:?}"
    );
    assert_eq!(
        row.badge_class.as_deref(),
        Some("badge hit"),
        "{what}'s badge class: {row:?}"
    );
}

const READ_STATE: &str = r#"
    const s = document.getElementById('state');
    return [s.textContent, s.className];
"#;

struct Page<'a> {
    rt: &'a Runtime,
    client: &'a Client,
}

impl Page<'_> {
    fn script(&self, what: &str, script: &str) -> Value {
        run(
            self.rt,
            COMMAND,
            what,
            self.client.execute(script, Vec::new()),
        )
    }

    fn rows(&self) -> Vec<Row> {
        let value = self.script("read #log", READ_LOG);
        let rows = value.as_array().expect("#log rows are an array");
        rows.iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().map(str::to_owned);
                Row {
                    class: s("class").unwrap_or_default(),
                    text: s("text").unwrap_or_default(),
                    badge: s("badge"),
                    badge_class: s("badge_class"),
                    rtt: s("rtt"),
                }
            })
            .collect()
    }

    fn entry_count(&self) -> u64 {
        self.script("count #log entries", ENTRY_COUNT)
            .as_u64()
            .expect("a count")
    }

    /// `#state`'s text and class.
    fn state(&self) -> (String, String) {
        let value = self.script("read #state", READ_STATE);
        let s = |i: usize| value[i].as_str().unwrap_or_default().to_owned();
        (s(0), s(1))
    }

    /// Types `line` into `input` and presses Enter, then waits until the log
    /// has grown by the echo and its answer (a reply, or an error row).
    fn submit(&self, input: &Element, line: &str) {
        let before = self.entry_count();
        let keys = format!("{line}{}", char::from(Key::Enter));
        run(
            self.rt,
            COMMAND,
            &format!("type {line:?}"),
            input.send_keys(&keys),
        );
        wait_until(
            PAGE_REACTS,
            &format!("#log shows {line:?} and its answer"),
            || self.entry_count() >= before + 2,
        );
    }

    fn input_value(&self, input: &Element) -> String {
        run(
            self.rt,
            COMMAND,
            "read #command's value",
            input.prop("value"),
        )
        .unwrap_or_default()
    }
}

/// The index of the first row at or after `from` that echoes `line`.
fn find_command(rows: &[Row], from: usize, line: &str) -> usize {
    rows.iter()
        .enumerate()
        .skip(from)
        .find(|(_, r)| r.class == "entry command" && r.text == line)
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("no echo of {line:?} in #log after row {from}: {rows:#?}"))
}

fn is_rtt(text: &str) -> bool {
    text.strip_suffix(" ms")
        .and_then(|n| n.split_once('.'))
        .is_some_and(|(whole, frac)| {
            !whole.is_empty()
                && whole.bytes().all(|b| b.is_ascii_digit())
                && frac.len() == 1
                && frac.bytes().all(|b| b.is_ascii_digit())
        })
}

#[test]
fn the_console_plays_the_seed_transcript_in_headless_chromium() {
    let Some(browser) = Browser::open() else {
        return;
    };
    let www = workspace_root().join("www");
    let client_js = www.join("pkg").join("kv_wasm_client.js");
    assert!(
        client_js.is_file(),
        "{} is missing: run cargo xtask build-wasm",
        client_js.display()
    );

    let www_arg = www.to_string_lossy().into_owned();
    let mut up = KvProcess::spawn(up_args(&["--www", &www_arg]));
    let console = up.console_addr();
    let rt = &browser.rt;
    let page = browser.page();

    browser.goto(console);
    let mut last = (String::new(), String::new());
    wait_until(FIRST_LOAD, "#state says connected", || {
        last = page.state();
        last.0 == "connected"
    });
    assert_eq!(last.1, "connected", "#state's class");

    let input = browser.find("#command");
    let typed: Vec<&str> = SEED_TRANSCRIPT
        .iter()
        .map(|(line, _)| *line)
        // The seed's DUMP showed this client the server's state, so the
        // first GET after it is read there (a cache entry from before may
        // be older than what the DUMP showed); the one after is a hit.
        .chain(["GET name", "GET name", "GET"])
        .collect();
    for line in &typed {
        page.submit(&input, line);
    }

    // The history: ArrowUp walks back, ArrowDown forward to an empty line.
    let press = |key: Key| {
        run(
            rt,
            COMMAND,
            &format!("press {key:?}"),
            input.send_keys(&char::from(key).to_string()),
        )
    };
    press(Key::Up);
    assert_eq!(page.input_value(&input), "GET", "ArrowUp once");
    press(Key::Up);
    assert_eq!(page.input_value(&input), "GET name", "ArrowUp twice");
    press(Key::Down);
    assert_eq!(page.input_value(&input), "GET", "then ArrowDown");
    press(Key::Down);
    assert_eq!(page.input_value(&input), "", "ArrowDown past the newest");

    // The screenshot comes before the assertions, so a failure has one too.
    browser.screenshot("console.png");

    let rows = page.rows();
    assert!(
        rows.first()
            .is_some_and(|r| r.class == "entry note" && r.text == "connected"),
        "#log starts with the `connected` note: {rows:#?}"
    );
    // Each seed line's reply, exactly as telnet shows it.
    let mut at = 0;
    let mut replies = Vec::new();
    for (line, expected) in SEED_TRANSCRIPT.iter().copied().chain([
        ("GET name", "\"Derek Moss\""),
        ("GET name", "\"Derek Moss\""),
    ]) {
        let i = find_command(&rows, at, line);
        let reply = rows
            .get(i + 1)
            .unwrap_or_else(|| panic!("no row after the echo of {line:?}: {rows:#?}"));
        // Multi-line replies (DUMP) also carry `multiline`, which puts their
        // badge above the text.
        let class = if expected.contains('\n') {
            "entry reply multiline"
        } else {
            "entry reply"
        };
        assert_eq!(reply.class, class, "reply to {line:?}: {rows:#?}");
        assert_eq!(reply.text, expected, "reply to {line:?}: {rows:#?}");
        assert!(
            reply.rtt.as_deref().is_some_and(is_rtt),
            "reply to {line:?} shows its round trip as `N.N ms`: {reply:?}"
        );
        assert!(
            reply.badge.is_some(),
            "reply to {line:?} has a badge: {reply:?}"
        );
        replies.push((line, reply.clone()));
        at = i + 2;
    }
    for (line, reply) in &replies {
        if *line == "PUT name Derek Moss" || *line == "put age 18" || *line == "Put gender M" {
            assert_eq!(
                reply.badge.as_deref(),
                Some("server"),
                "reply to {line:?}: {reply:?}"
            );
        }
    }
    let (_, first_get) = &replies[2];
    assert!(
        first_get
            .badge
            .as_deref()
            .is_some_and(|b| b == "MISS" || b.starts_with("HIT · ")),
        "first GET name: a HIT or MISS badge: {first_get:?}"
    );
    let (_, second_get) = replies.last().expect("the second GET name");
    assert_cache_hit(second_get, "the second GET name");

    // `GET` without a key is refused in the page and never sent.
    let i = find_command(&rows, at, "GET");
    let error = rows
        .get(i + 1)
        .unwrap_or_else(|| panic!("no row after the echo of \"GET\": {rows:#?}"));
    assert_eq!(error.class, "entry error", "answer to GET: {rows:#?}");
    assert!(
        error.text.contains("wrong number of arguments") && error.text.contains("not sent"),
        "answer to GET says it was not sent: {error:?}"
    );
    assert_eq!(
        (error.badge.as_ref(), error.rtt.as_ref()),
        (None, None),
        "nothing was sent, so no badge nor round trip: {error:?}"
    );
    assert_eq!(rows.len(), i + 2, "nothing after GET's error: {rows:#?}");

    // When kv up goes away, the page says so and keeps retrying.
    up.kill();
    let state = wait_for(PAGE_REACTS, "#state turns disconnected", || {
        let state = page.state();
        (state.1 == "disconnected").then_some(state)
    });
    assert!(
        state.0.contains("disconnected") || state.0.contains("retrying"),
        "#state's text after kv up died: {state:?}"
    );
    let rows = page.rows();
    assert!(
        rows.iter()
            .any(|r| r.class == "entry error" && r.text.contains("connection lost")),
        "#log notes the lost connection: {rows:#?}"
    );

    browser.close();
}

/// The row answering the first echo of `line` at or after row `from`, and
/// the index just past it.
fn reply_to(rows: &[Row], from: usize, line: &str) -> (Row, usize) {
    let i = find_command(rows, from, line);
    let reply = rows
        .get(i + 1)
        .unwrap_or_else(|| panic!("no row after the echo of {line:?}: {rows:#?}"))
        .clone();
    (reply, i + 2)
}

/// `kv up` as an installed binary runs it: a copy alone in an empty
/// directory, `KV_WWW` unset, no `--www`. The console it serves comes from
/// inside the binary and works: it connects, plays the seed transcript, and
/// the repeated GET is a cache hit.
#[test]
fn a_copied_kv_serves_its_built_in_console_to_chromium() {
    let Some(browser) = Browser::open() else {
        return;
    };
    let wasm = workspace_root().join("www/pkg/kv_wasm_client_bg.wasm");
    assert!(
        wasm.is_file(),
        "{} is missing: run cargo xtask build-wasm (before the kv build the tests make)",
        wasm.display()
    );
    let up = KvProcess::spawn_copied(up_args(&["--in-memory"]));
    let console = up.console_addr();
    let page = browser.page();

    browser.goto(console);
    let state = wait_for(FIRST_LOAD, "#state leaves loading…", || {
        let state = page.state();
        (state.1 != "connecting").then_some(state)
    });
    assert_eq!(
        state,
        ("connected".to_owned(), "connected".to_owned()),
        "#state of the built-in console"
    );

    let input = browser.find("#command");
    for (line, _) in SEED_TRANSCRIPT {
        page.submit(&input, line);
    }
    // Twice: the first after the DUMP is read at the server (see the other
    // test), the second is a hit.
    page.submit(&input, "GET name");
    page.submit(&input, "GET name");

    // The live charts: a client of the proxy keeps sending GETs until the
    // requests-per-second chart shows a rate above zero (its figure covers
    // the last second, so the load goes on while the page is read), before
    // the screenshot so that the drawn line is in the picture.
    let mut load = Conn::connect(up.proxy_addr());
    let (rps, path) = wait_for(PAGE_REACTS, "#chart-rps shows requests per second", || {
        for _ in 0..20 {
            assert_eq!(load.cmd("GET name"), "\"Derek Moss\"");
        }
        let chart = page.script("read #chart-rps", READ_CHART);
        let text = chart[0].as_str().unwrap_or_default().to_owned();
        let path = chart[1].as_str().unwrap_or_default().to_owned();
        let rate = text.trim_end_matches(['k', 'M']).parse::<f64>().ok()?;
        // A line (two points or more), not just the first dot.
        (rate > 0.0 && path.contains('L')).then_some((text, path))
    });
    println!("the console's requests/s chart reads {rps} (path {path})");

    // Before the assertions, so that a failure has one too.
    browser.screenshot("console-built-in.png");

    let rows = page.rows();
    let mut at = 0;
    for (line, expected) in SEED_TRANSCRIPT {
        let (reply, next) = reply_to(&rows, at, line);
        assert_eq!(reply.text, *expected, "reply to {line:?}: {rows:#?}");
        at = next;
    }
    let (after_dump, at) = reply_to(&rows, at, "GET name");
    assert_eq!(after_dump.text, "\"Derek Moss\"", "{rows:#?}");
    let (second_get, _) = reply_to(&rows, at, "GET name");
    assert_eq!(second_get.text, "\"Derek Moss\"", "{rows:#?}");
    assert_cache_hit(&second_get, "the repeated GET name");

    browser.close();
}

/// A console folder without `pkg/` (the wasm never built): the page does
/// not hang at "loading…" but says what failed and how to build it.
#[test]
fn without_the_wasm_the_page_says_how_to_build_it() {
    let Some(browser) = Browser::open() else {
        return;
    };
    let www = scratch_dir("www-without-pkg");
    for file in ["index.html", "style.css"] {
        std::fs::copy(workspace_root().join("www").join(file), www.join(file))
            .unwrap_or_else(|e| panic!("cannot copy www/{file} to {}: {e}", www.display()));
    }
    let www_arg = www.to_string_lossy().into_owned();
    let up = KvProcess::spawn(up_args(&["--in-memory", "--www", &www_arg]));
    let console = up.console_addr();
    let page = browser.page();

    browser.goto(console);
    let (text, class) = wait_for(FIRST_LOAD, "#state leaves loading…", || {
        let state = page.state();
        (state.1 != "connecting").then_some(state)
    });
    browser.screenshot("console-without-wasm.png");
    assert_eq!(class, "disconnected", "#state's class: {text:?}");
    assert!(
        text.starts_with("failed to load the console: ")
            && text.contains("pkg/kv_wasm_client.js: 404")
            && text.contains("cargo xtask build-wasm"),
        "#state names the missing module and how to build it: {text:?}"
    );

    browser.close();
    drop(up);
    let _ = std::fs::remove_dir_all(&www);
}

/// A console that tracks (`HELLO 3`, `CLIENT TRACKING ON` at the proxy)
/// shows the invalidation of a key it read, pushed when another client
/// changes it, as a row of its own that pairs with no command.
#[test]
fn the_console_shows_a_tracking_push_as_it_arrives() {
    let Some(browser) = Browser::open() else {
        return;
    };
    let www = workspace_root().join("www");
    let www_arg = www.to_string_lossy().into_owned();
    let up = KvProcess::spawn(up_args(&["--www", &www_arg]));
    let page = browser.page();
    browser.goto(up.console_addr());
    wait_until(FIRST_LOAD, "#state says connected", || {
        page.state().0 == "connected"
    });
    let input = browser.find("#command");
    for line in ["HELLO 3", "CLIENT TRACKING ON", "GET watched"] {
        page.submit(&input, line);
    }
    let answered = |rows: &[Row]| {
        rows.iter().any(|r| r.text == "GET watched")
            && rows.last().is_some_and(|r| r.text == "(nil)")
    };
    let shown = |rows: &[Row]| {
        rows.iter().any(|r| {
            r.class.starts_with("entry note")
                && r.text.starts_with("(push)")
                && r.text.contains("watched")
        })
    };
    let rows_until = |what: &str, done: &dyn Fn(&[Row]) -> bool| {
        let deadline = std::time::Instant::now() + PAGE_REACTS;
        loop {
            let rows = page.rows();
            if done(&rows) {
                return rows;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not within {PAGE_REACTS:?}: {rows:#?}"
            );
            std::thread::sleep(kv_tests::POLL_INTERVAL);
        }
    };
    let rows = rows_until("the GET is answered", &answered);
    assert!(
        rows.iter().any(|r| r.text == "OK"),
        "CLIENT TRACKING ON is accepted: {rows:#?}"
    );
    let mut other = Conn::connect(up.proxy_addr());
    assert_eq!(other.cmd("SET watched v"), "OK");
    rows_until("the push is shown", &shown);
    browser.screenshot("console-push.png");
    browser.close();
}
