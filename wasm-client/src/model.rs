//! The console's logic without the DOM: input validation, history, pairing
//! replies with commands, and what each log line says. Pure and testable on
//! any target; `dom.rs` only wires it to the page.

use crate::charts::Charts;
use kv_core::bridge::{BridgeReply, Outbound, WireSource};
use kv_core::command::table::Cache;
use kv_core::{Client, ClientConfig, ClientEvent, Command, Instant, Limits, Reply, RequestId};
use std::collections::BTreeMap;
use std::time::Duration;

/// Most commands kept in the history.
const HISTORY_LIMIT: usize = 200;

/// One line in the console's log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// What kind of line it is (styles it).
    pub kind: EntryKind,
    /// The text, possibly several lines.
    pub text: String,
    /// `HIT · 1.5 s old`, `MISS`, `server` or `proxy`, for replies.
    pub badge: Option<String>,
    /// Round trip in milliseconds, for replies.
    pub rtt_ms: Option<f64>,
}

/// The kinds of log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A command the user sent.
    Command,
    /// A reply that is not an error.
    Reply,
    /// An error reply, or a local failure (invalid input, connection lost).
    Error,
    /// A note from the console itself (connected, reconnecting).
    Note,
}

impl LogEntry {
    fn note(kind: EntryKind, text: impl Into<String>) -> Self {
        LogEntry {
            kind,
            text: text.into(),
            badge: None,
            rtt_ms: None,
        }
    }
}

/// What the console wants sent after a submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// RESP2 bytes of the command, to send as one binary message.
    pub bytes: Vec<u8>,
}

/// The console's state.
#[derive(Debug)]
pub struct Console {
    client: Client,
    connected: bool,
    limits: Limits,
    history: Vec<String>,
    /// Position while walking the history with Up/Down; `history.len()`
    /// means "the fresh line".
    cursor: usize,
    pending: BTreeMap<RequestId, (String, bool)>,
    charts: Charts,
    /// A snapshot came in since [`Console::take_charts_changed`] last ran.
    charts_changed: bool,
}

impl Console {
    /// A console not yet connected.
    pub fn new(now: Instant) -> Self {
        let mut client = Client::new(ClientConfig::default(), now);
        // Nothing is connected yet: mark the client broken until it is.
        client.handle_disconnected(now);
        Console {
            client,
            connected: false,
            limits: Limits::default(),
            history: Vec::new(),
            cursor: 0,
            pending: BTreeMap::new(),
            charts: Charts::default(),
            charts_changed: false,
        }
    }

    /// Whether the socket is open.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether the socket should be closed and reopened: a command timed
    /// out, so replies can no longer be paired with commands on it.
    pub fn needs_reconnect(&self) -> bool {
        self.connected && self.client.is_broken()
    }

    /// The socket opened.
    pub fn handle_connected(&mut self, now: Instant) -> LogEntry {
        self.client.handle_reconnected(now);
        self.connected = true;
        LogEntry::note(EntryKind::Note, "connected")
    }

    /// The socket closed: every command awaiting a reply fails.
    pub fn handle_disconnected(&mut self, now: Instant) -> Vec<LogEntry> {
        let was = std::mem::replace(&mut self.connected, false);
        self.client.handle_disconnected(now);
        let mut out = self.drain_events();
        if was {
            out.push(LogEntry::note(
                EntryKind::Error,
                "connection lost; reconnecting…",
            ));
        }
        out
    }

    /// Validates a typed line and, if it is a command, returns what to send
    /// plus the log line echoing it. Invalid input is reported without
    /// sending anything.
    pub fn submit(&mut self, line: &str, now: Instant) -> (Vec<LogEntry>, Option<Outgoing>) {
        let line = line.trim();
        if line.is_empty() {
            return (Vec::new(), None);
        }
        // A password stays out of the history and the log on screen.
        let is_auth = line
            .split_whitespace()
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case("AUTH"));
        let echo = if is_auth {
            LogEntry::note(EntryKind::Command, "AUTH ••••••")
        } else {
            self.remember(line);
            LogEntry::note(EntryKind::Command, line)
        };
        let cmd = match Command::from_inline(line.as_bytes().to_vec().into(), &self.limits) {
            Ok(cmd) => cmd,
            Err(e) => {
                return (
                    vec![
                        echo,
                        LogEntry::note(EntryKind::Error, format!("(error) {e} (not sent)")),
                    ],
                    None,
                )
            }
        };
        if !self.connected {
            return (
                vec![
                    echo,
                    LogEntry::note(
                        EntryKind::Error,
                        "not connected; wait for the connection to come back",
                    ),
                ],
                None,
            );
        }
        // A read the proxy may answer from its cache gets a HIT/MISS badge.
        let is_get = matches!(cmd.spec().cache, Cache::Value);
        match self.client.send(&cmd, now) {
            Ok(id) => {
                self.pending.insert(id, (echo.text.clone(), is_get));
                let bytes = self
                    .client
                    .poll_transmit()
                    .map(|b| b.to_vec())
                    .unwrap_or_default();
                (vec![echo], Some(Outgoing { bytes }))
            }
            Err(e) => (
                vec![
                    echo,
                    LogEntry::note(EntryKind::Error, format!("not sent: {e}")),
                ],
                None,
            ),
        }
    }

    /// A message arrived from the proxy.
    pub fn handle_message(&mut self, json: &str, now: Instant) -> Vec<LogEntry> {
        match Outbound::from_json(json) {
            Ok(Outbound::Stats(snapshot)) => {
                self.charts.handle_snapshot(snapshot);
                self.charts_changed = true;
                Vec::new()
            }
            Ok(Outbound::Reply(m)) => {
                let reply = m.reply.to_reply();
                self.client.handle_reply(reply, now);
                let mut out = Vec::new();
                while let Some(ev) = self.client.poll_event() {
                    out.push(self.entry_for(ev, Some(&m)));
                }
                // A push (a tracking client's invalidation) answers no
                // command: shown as it arrives, apart from the replies.
                while self.client.poll_push().is_some() {
                    out.push(LogEntry::note(
                        EntryKind::Note,
                        format!("(push) {}", m.display),
                    ));
                }
                out
            }
            Err(e) => vec![LogEntry::note(
                EntryKind::Error,
                format!("unreadable message from the proxy: {e}"),
            )],
        }
    }

    /// The live charts.
    pub fn charts(&self) -> &Charts {
        &self.charts
    }

    /// Whether the charts have news since the last call (then they are
    /// redrawn).
    pub fn take_charts_changed(&mut self) -> bool {
        std::mem::take(&mut self.charts_changed)
    }

    /// When [`Console::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.client.poll_timeout()
    }

    /// Fails commands whose reply is overdue.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<LogEntry> {
        self.client.handle_timeout(now);
        self.drain_events()
    }

    fn drain_events(&mut self) -> Vec<LogEntry> {
        let mut out = Vec::new();
        while let Some(ev) = self.client.poll_event() {
            out.push(self.entry_for(ev, None));
        }
        out
    }

    fn entry_for(&mut self, ev: ClientEvent, msg: Option<&BridgeReply>) -> LogEntry {
        match ev {
            ClientEvent::Reply { id, reply, rtt } => {
                let (_, is_get) = self.pending.remove(&id).unwrap_or_default();
                let text = msg.map(|m| m.display.clone()).unwrap_or_default();
                let badge = msg.map(|m| badge(m, is_get));
                LogEntry {
                    kind: if matches!(reply, Reply::Error(_)) {
                        EntryKind::Error
                    } else {
                        EntryKind::Reply
                    },
                    text,
                    badge,
                    rtt_ms: Some(rtt.as_secs_f64() * 1000.0),
                }
            }
            ClientEvent::Failed { id, reason } => {
                let (line, _) = self.pending.remove(&id).unwrap_or_default();
                LogEntry::note(EntryKind::Error, format!("(error) {line}: {reason}"))
            }
        }
    }

    fn remember(&mut self, line: &str) {
        if self.history.last().map(String::as_str) != Some(line) {
            self.history.push(line.to_owned());
            if self.history.len() > HISTORY_LIMIT {
                self.history.remove(0);
            }
        }
        self.cursor = self.history.len();
    }

    /// Up arrow: the previous command, if any.
    pub fn history_up(&mut self) -> Option<&str> {
        if self.cursor == 0 {
            return self.history.first().map(String::as_str);
        }
        self.cursor -= 1;
        self.history.get(self.cursor).map(String::as_str)
    }

    /// Down arrow: the next command, or an empty line past the newest.
    pub fn history_down(&mut self) -> &str {
        if self.cursor < self.history.len() {
            self.cursor += 1;
        }
        self.history.get(self.cursor).map_or("", String::as_str)
    }
}

/// The badge shown next to a reply.
fn badge(m: &BridgeReply, is_get: bool) -> String {
    match m.source {
        WireSource::Cache => format!("HIT · {} old", age(m.age_ms.unwrap_or(0.0))),
        WireSource::Server if is_get => "MISS".to_owned(),
        WireSource::Server => "server".to_owned(),
        WireSource::Proxy => "proxy".to_owned(),
    }
}

fn age(ms: f64) -> String {
    let d = Duration::from_secs_f64(ms.max(0.0) / 1000.0);
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn invalid_input_is_not_sent() {
        let mut c = Console::new(t(0));
        c.handle_connected(t(0));
        let (log, out) = c.submit("GET", t(1));
        assert_eq!(out, None);
        assert_eq!(
            log[1].text,
            "(error) ERR wrong number of arguments for 'get' command (not sent)"
        );
        let (_, out) = c.submit("FROB x", t(1));
        assert_eq!(out, None);
    }

    #[test]
    fn a_get_is_sent_as_resp_and_its_reply_gets_a_badge() {
        let mut c = Console::new(t(0));
        c.handle_connected(t(0));
        let (log, out) = c.submit("get name", t(10));
        assert_eq!(log[0].text, "get name");
        assert_eq!(out.unwrap().bytes, b"*2\r\n$3\r\nGET\r\n$4\r\nname\r\n");
        let log = c.handle_message(
            r#"{"reply":{"type":"bulk","value":"Derek Moss"},"display":"\"Derek Moss\"","source":"cache","age_ms":1520.0,"proxy_us":3}"#,
            t(14),
        );
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].text, "\"Derek Moss\"");
        assert_eq!(log[0].badge.as_deref(), Some("HIT · 1.5 s old"));
        assert_eq!(log[0].rtt_ms, Some(4.0));
        c.submit("GET other", t(20));
        let log = c.handle_message(
            r#"{"reply":{"type":"nil"},"display":"(nil)","source":"server","proxy_us":300}"#,
            t(21),
        );
        assert_eq!(log[0].badge.as_deref(), Some("MISS"));
    }

    #[test]
    fn a_push_is_shown_as_it_arrives_and_pairs_with_no_command() {
        let mut c = Console::new(t(0));
        c.handle_connected(t(0));
        c.submit("GET k", t(1));
        let log = c.handle_message(
            r#"{"reply":{"type":"push","items":[{"type":"bulk","value":"invalidate"},{"type":"array","items":[{"type":"bulk","value":"k"}]}]},"display":"invalidate k","source":"server","proxy_us":0}"#,
            t(2),
        );
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].kind, EntryKind::Note);
        assert_eq!(log[0].text, "(push) invalidate k");
        let log = c.handle_message(
            r#"{"reply":{"type":"nil"},"display":"(nil)","source":"server","proxy_us":3}"#,
            t(3),
        );
        assert_eq!(
            log[0].text, "(nil)",
            "the GET's own reply still pairs with it"
        );
    }

    #[test]
    fn disconnect_fails_pending_commands_and_blocks_sending() {
        let mut c = Console::new(t(0));
        c.handle_connected(t(0));
        c.submit("GET a", t(1));
        let log = c.handle_disconnected(t(2));
        assert_eq!(log[0].text, "(error) GET a: connection lost");
        assert_eq!(log[1].text, "connection lost; reconnecting…");
        let (_, out) = c.submit("GET a", t(3));
        assert_eq!(out, None);
        c.handle_connected(t(4));
        assert!(c.submit("GET a", t(5)).1.is_some());
    }

    #[test]
    fn overdue_replies_time_out() {
        let mut c = Console::new(t(0));
        c.handle_connected(t(0));
        c.submit("DUMP", t(0));
        assert_eq!(c.poll_timeout(), Some(t(10_000)));
        assert!(c.handle_timeout(t(9_999)).is_empty());
        assert_eq!(
            c.handle_timeout(t(10_000))[0].text,
            "(error) DUMP: timed out"
        );
    }

    #[test]
    fn passwords_stay_off_the_screen_and_out_of_the_history() {
        let mut c = Console::new(t(0));
        c.handle_connected(t(0));
        let (log, out) = c.submit("auth s3cret", t(1));
        assert_eq!(log[0].text, "AUTH ••••••");
        assert_eq!(out.unwrap().bytes, b"*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\n");
        assert_eq!(c.history_up(), None);
    }

    #[test]
    fn history_walks_up_and_down() {
        let mut c = Console::new(t(0));
        for l in ["GET a", "GET b", "GET b", "DUMP"] {
            c.submit(l, t(0));
        }
        assert_eq!(c.history_up(), Some("DUMP"));
        assert_eq!(c.history_up(), Some("GET b"));
        assert_eq!(c.history_up(), Some("GET a"));
        assert_eq!(c.history_up(), Some("GET a"));
        assert_eq!(c.history_down(), "GET b");
        assert_eq!(c.history_down(), "DUMP");
        assert_eq!(c.history_down(), "");
    }
}
