//! wasm-bindgen tests: the console model running as WebAssembly (in Node),
//! with the clock as `performance.now()` would give it.

#![cfg(target_arch = "wasm32")]

use kv_core::Instant;
use kv_wasm_client::model::{Console, EntryKind};
use wasm_bindgen_test::*;

#[wasm_bindgen_test]
fn seed_commands_validate_and_encode_in_wasm() {
    let mut c = Console::new(Instant::from_millis_f64(0.5));
    c.handle_connected(Instant::from_millis_f64(1.0));
    let (log, out) = c.submit("PUT name Derek Moss", Instant::from_millis_f64(2.0));
    assert_eq!(log[0].kind, EntryKind::Command);
    assert_eq!(
        out.unwrap().bytes,
        b"*3\r\n$3\r\nSET\r\n$4\r\nname\r\n$10\r\nDerek Moss\r\n".to_vec()
    );
    let log = c.handle_message(r#"{"reply":{"type":"status","value":"OK"},"display":"OK","source":"server","proxy_us":120}"#, Instant::from_millis_f64(3.25));
    assert_eq!(log[0].text, "OK");
    assert_eq!(log[0].badge.as_deref(), Some("server"));
    assert_eq!(log[0].rtt_ms, Some(1.25));
}

#[wasm_bindgen_test]
fn cache_hit_badge_in_wasm() {
    let mut c = Console::new(Instant::ZERO);
    c.handle_connected(Instant::ZERO);
    c.submit("GET name", Instant::from_millis_f64(10.0));
    let log = c.handle_message(
        r#"{"reply":{"type":"bulk","value":"Derek Moss"},"display":"\"Derek Moss\"","source":"cache","age_ms":250.0,"proxy_us":4}"#,
        Instant::from_millis_f64(11.0),
    );
    assert_eq!(log[0].badge.as_deref(), Some("HIT · 250 ms old"));
}

#[wasm_bindgen_test]
fn invalid_input_is_refused_in_wasm() {
    let mut c = Console::new(Instant::ZERO);
    c.handle_connected(Instant::ZERO);
    let (log, out) = c.submit("NOPE", Instant::ZERO);
    assert!(out.is_none());
    assert_eq!(log[1].kind, EntryKind::Error);
}
