//! The kv browser console. [`model`] holds the logic (pure, tested on any
//! target); `dom` wires it to the page and the WebSocket on wasm32.
//!
//! The page calls the exported `start()` once the module is loaded.

#![warn(missing_docs)]

pub mod model;

#[cfg(target_arch = "wasm32")]
mod dom;

#[cfg(target_arch = "wasm32")]
pub use dom::start;
