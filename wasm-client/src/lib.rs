//! The kv browser console. [`model`] holds the logic and [`charts`] the
//! live charts' (both pure, tested on any target); `dom` wires it to the page and the WebSocket on wasm32.
//!
//! The page calls the exported `start()` once the module is loaded.

#![warn(missing_docs)]

pub mod charts;
pub mod model;

#[cfg(target_arch = "wasm32")]
mod dom;

#[cfg(target_arch = "wasm32")]
pub use dom::start;
