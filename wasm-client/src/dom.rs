//! Wiring of the console model to the page (`#command`, `#log`, `#state`)
//! and to the WebSocket at `/ws` of the page's own origin.

use crate::charts::{self, Point};
use crate::model::{Console, EntryKind, LogEntry};
use kv_core::{Backoff, Instant};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{
    BinaryType, Document, HtmlElement, HtmlInputElement, KeyboardEvent, MessageEvent, WebSocket,
};

/// First reconnection delay; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Most log entries kept on the page, so a long session stays light.
const MAX_LOG_ENTRIES: u32 = 500;

struct App {
    console: Console,
    ws: Option<WebSocket>,
    backoff: Backoff,
    doc: Document,
    log: HtmlElement,
    input: HtmlInputElement,
    state: HtmlElement,
}

fn now() -> Instant {
    let ms = web_sys::window()
        .and_then(|w| w.performance())
        .map_or(0.0, |p| p.now());
    Instant::from_millis_f64(ms)
}

fn element<T: JsCast>(doc: &Document, id: &str) -> Result<T, JsValue> {
    doc.get_element_by_id(id)
        .ok_or_else(|| JsValue::from_str(&format!("the page has no #{id}")))?
        .dyn_into::<T>()
        .map_err(|_| JsValue::from_str(&format!("#{id} has the wrong element type")))
}

/// Starts the console on the current page.
#[wasm_bindgen]
pub fn start() -> Result<(), JsValue> {
    let window = web_sys::window().ok_or("no window")?;
    let doc = window.document().ok_or("no document")?;
    let app = Rc::new(RefCell::new(App {
        console: Console::new(now()),
        ws: None,
        backoff: Backoff::new(MIN_BACKOFF, MAX_BACKOFF),
        log: element(&doc, "log")?,
        input: element(&doc, "command")?,
        state: element(&doc, "state")?,
        doc,
    }));

    let on_key = {
        let app = app.clone();
        Closure::<dyn FnMut(KeyboardEvent)>::new(move |e: KeyboardEvent| on_key(&app, &e))
    };
    app.borrow()
        .input
        .add_event_listener_with_callback("keydown", on_key.as_ref().unchecked_ref())?;
    on_key.forget();

    // Request timeouts: the model says when; a light periodic check is
    // simpler than re-arming a browser timer for every request.
    let tick = {
        let app = app.clone();
        Closure::<dyn FnMut()>::new(move || {
            let mut a = app.borrow_mut();
            let entries = a.console.handle_timeout(now());
            append_all(&a, &entries);
            if a.console.needs_reconnect() {
                if let Some(ws) = a.ws.take() {
                    let _ = ws.close();
                }
                drop(a);
                schedule_reconnect(&app);
            }
        })
    };
    window.set_interval_with_callback_and_timeout_and_arguments_0(
        tick.as_ref().unchecked_ref(),
        250,
    )?;
    tick.forget();

    connect(&app);
    app.borrow().input.focus()?;
    Ok(())
}

fn ws_url() -> Option<String> {
    let loc = web_sys::window()?.location();
    let scheme = if loc.protocol().ok()? == "https:" {
        "wss"
    } else {
        "ws"
    };
    // `stats=1`: the proxy also sends its figures once a second, for the
    // charts.
    Some(format!("{scheme}://{}/ws?stats=1", loc.host().ok()?))
}

fn set_state(a: &App, text: &str, class: &str) {
    a.state.set_text_content(Some(text));
    a.state.set_class_name(class);
}

fn connect(app: &Rc<RefCell<App>>) {
    let Some(url) = ws_url() else { return };
    let ws = match WebSocket::new(&url) {
        Ok(ws) => ws,
        Err(_) => {
            schedule_reconnect(app);
            return;
        }
    };
    ws.set_binary_type(BinaryType::Arraybuffer);
    set_state(&app.borrow(), "connecting…", "connecting");

    let on_open = {
        let app = app.clone();
        Closure::<dyn FnMut()>::new(move || {
            let mut a = app.borrow_mut();
            a.backoff.handle_success();
            let entry = a.console.handle_connected(now());
            append(&a, &entry);
            set_state(&a, "connected", "connected");
        })
    };
    ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    on_open.forget();

    let on_message = {
        let app = app.clone();
        Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            let mut a = app.borrow_mut();
            let entries = match e.data().as_string() {
                Some(text) => a.console.handle_message(&text, now()),
                None => vec![LogEntry {
                    kind: EntryKind::Error,
                    text: "unexpected binary message from the proxy".into(),
                    badge: None,
                    rtt_ms: None,
                }],
            };
            append_all(&a, &entries);
            if a.console.take_charts_changed() {
                draw_charts(&a);
            }
        })
    };
    ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget();

    let on_close = {
        let app = app.clone();
        let this = ws.clone();
        Closure::<dyn FnMut()>::new(move || {
            let current = app.borrow().ws.as_ref().is_some_and(|w| w == &this);
            if !current {
                return;
            }
            {
                let mut a = app.borrow_mut();
                a.ws = None;
                let entries = a.console.handle_disconnected(now());
                append_all(&a, &entries);
            }
            schedule_reconnect(&app);
        })
    };
    ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    on_close.forget();

    app.borrow_mut().ws = Some(ws);
}

fn schedule_reconnect(app: &Rc<RefCell<App>>) {
    let delay = {
        let mut a = app.borrow_mut();
        let t = now();
        let delay = a.backoff.handle_failure(t) - t;
        set_state(
            &a,
            &format!("disconnected — retrying in {:.1} s", delay.as_secs_f64()),
            "disconnected",
        );
        i32::try_from(delay.as_millis()).unwrap_or(i32::MAX)
    };
    let retry = {
        let app = app.clone();
        Closure::once_into_js(move || connect(&app))
    };
    if let Some(w) = web_sys::window() {
        let _ =
            w.set_timeout_with_callback_and_timeout_and_arguments_0(retry.unchecked_ref(), delay);
    }
}

fn on_key(app: &Rc<RefCell<App>>, e: &KeyboardEvent) {
    let mut a = app.borrow_mut();
    match e.key().as_str() {
        "Enter" => {
            e.prevent_default();
            let line = a.input.value();
            let (entries, out) = a.console.submit(&line, now());
            a.input.set_value("");
            append_all(&a, &entries);
            if let (Some(out), Some(ws)) = (out, a.ws.as_ref()) {
                if ws.send_with_u8_array(&out.bytes).is_err() {
                    let entry = LogEntry {
                        kind: EntryKind::Error,
                        text: "the socket refused the message".into(),
                        badge: None,
                        rtt_ms: None,
                    };
                    append(&a, &entry);
                }
            }
        }
        "ArrowUp" => {
            e.prevent_default();
            if let Some(line) = a.console.history_up().map(str::to_owned) {
                a.input.set_value(&line);
            }
        }
        "ArrowDown" => {
            e.prevent_default();
            let line = a.console.history_down().to_owned();
            a.input.set_value(&line);
        }
        _ => {}
    }
}

fn append_all(a: &App, entries: &[LogEntry]) {
    for e in entries {
        append(a, e);
    }
}

fn append(a: &App, entry: &LogEntry) {
    let Ok(row) = a.doc.create_element("div") else {
        return;
    };
    let kind = match entry.kind {
        EntryKind::Command => "command",
        EntryKind::Reply => "reply",
        EntryKind::Error => "error",
        EntryKind::Note => "note",
    };
    // Multi-line replies (DUMP, INFO) put their badge above the text rather
    // than beside its widest line.
    let multiline = if entry.text.contains('\n') {
        " multiline"
    } else {
        ""
    };
    row.set_class_name(&format!("entry {kind}{multiline}"));
    if let Ok(text) = a.doc.create_element("span") {
        text.set_class_name("text");
        text.set_text_content(Some(&entry.text));
        let _ = row.append_child(&text);
    }
    if let Some(badge) = &entry.badge {
        if let Ok(b) = a.doc.create_element("span") {
            let class = if badge.starts_with("HIT") {
                "badge hit"
            } else if badge == "MISS" {
                "badge miss"
            } else {
                "badge"
            };
            b.set_class_name(class);
            b.set_text_content(Some(badge));
            let _ = row.append_child(&b);
        }
    }
    if let Some(ms) = entry.rtt_ms {
        if let Ok(r) = a.doc.create_element("span") {
            r.set_class_name("rtt");
            r.set_text_content(Some(&format!("{ms:.1} ms")));
            let _ = row.append_child(&r);
        }
    }
    let _ = a.log.append_child(&row);
    while a.log.child_element_count() > MAX_LOG_ENTRIES {
        if let Some(first) = a.log.first_element_child() {
            first.remove();
        }
    }
    a.log.set_scroll_top(a.log.scroll_height());
}

/// Redraws every chart from the console's points.
fn draw_charts(a: &App) {
    let points = a.console.charts().points();
    let Some(latest) = points.back() else { return };
    let series = |f: &dyn Fn(&Point) -> Option<f64>| points.iter().map(f).collect::<Vec<_>>();
    draw(
        a,
        "chart-rps",
        &[series(&|p| Some(p.rps))],
        1.0,
        &charts::short(latest.rps),
    );
    let ratio = latest
        .hit_ratio
        .map_or("–".to_owned(), |r| format!("{r:.0} %"));
    draw(a, "chart-hits", &[series(&|p| p.hit_ratio)], 100.0, &ratio);
    // Latencies span decades: drawn on a log scale, 1 µs to 5 s.
    let log = |us: Option<u64>| us.map(|us| (us.min(10_000_000) as f64).log10());
    draw(
        a,
        "chart-latency",
        &[series(&|p| log(p.p50_us)), series(&|p| log(p.p99_us))],
        7.0,
        &format!(
            "{} · {}",
            charts::latency(latest.p50_us),
            charts::latency(latest.p99_us)
        ),
    );
    draw(
        a,
        "chart-entries",
        &[series(&|p| Some(p.entries as f64))],
        1.0,
        &charts::short(latest.entries as f64),
    );
    draw(
        a,
        "chart-upstream",
        &[series(&|p| Some(f64::from(u8::from(p.upstream_up))))],
        1.0,
        &latest.upstream,
    );
    if let Some(fig) = a.doc.get_element_by_id("chart-upstream") {
        fig.set_class_name(if latest.upstream_up {
            "chart"
        } else {
            "chart down"
        });
    }
}

/// Sets one chart's paths (one per series, in the SVG's order) and caption.
fn draw(a: &App, id: &str, series: &[Vec<Option<f64>>], max: f64, caption: &str) {
    let Some(fig) = a.doc.get_element_by_id(id) else {
        return;
    };
    if let Ok(Some(now)) = fig.query_selector(".now") {
        now.set_text_content(Some(caption));
    }
    let Ok(paths) = fig.query_selector_all("path") else {
        return;
    };
    for (i, values) in series.iter().enumerate() {
        let path = paths
            .item(i as u32)
            .and_then(|n| n.dyn_into::<web_sys::Element>().ok());
        if let Some(path) = path {
            let _ = path.set_attribute("d", &charts::path(values, max));
        }
    }
}
