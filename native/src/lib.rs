//! `kv-native`: the Tokio drivers of the kv store, and the `kv` binary's
//! commands.
//!
//! The protocol, the store, the cache, the proxy's rules and every timing
//! policy live in `kv-core`, as sans-IO state machines. This crate only
//! moves bytes and time between sockets, files and those machines:
//!
//! - `server`: the server's connections around one [`kv_core::Server`];
//! - `proxy`: TCP and WebSocket clients, the upstream task and the timer
//!   task around one [`kv_core::Proxy`];
//! - `conn`: the one connection loop both use, on the core's
//!   [`ConnPolicy`](kv_core::ConnPolicy);
//! - `persist`: the server's append-only log (replay, the writer thread,
//!   rewrites);
//! - `http`: the console listener's static files and origin check;
//! - `runtime`: service threads, shutdown and signals, the clock,
//!   listeners;
//! - [`cli`]: the `kv cli` client around [`kv_core::Client`];
//! - [`app`]: `kv server`, `kv proxy` and `kv up`; [`args`]: the command
//!   line and the environment; [`config`]: the `--config` file.
//!
//! Each service runs on its own thread with a single-threaded runtime, like
//! Redis: its machine sits in an `Rc<RefCell<…>>`, borrowed only between
//! awaits, and needs no lock.

#![warn(missing_docs)]

pub mod app;
pub mod args;
pub mod cli;
pub mod config;
mod conn;
mod http;
pub mod metrics;
mod persist;
mod proxy;
mod runtime;
mod server;

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// The top-level module a source file belongs to (`proxy` for
    /// `proxy/tcp.rs`), or `None` for the crate root and `main.rs`.
    fn module_of(rel: &Path) -> Option<String> {
        let first = rel.components().next()?.as_os_str().to_str()?;
        let name = first.strip_suffix(".rs").unwrap_or(first);
        (!matches!(name, "lib" | "main")).then(|| name.to_owned())
    }

    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// `native/` has no import cycle between its top-level modules: each
    /// `crate::m` a module names makes an edge, and the edges must order.
    #[test]
    fn top_level_modules_form_no_cycle() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in files {
            let rel = file.strip_prefix(&src).unwrap();
            let Some(from) = module_of(rel) else { continue };
            let text = std::fs::read_to_string(&file).unwrap();
            let edges = deps.entry(from.clone()).or_default();
            for (at, _) in text.match_indices("crate::") {
                let to: String = text[at + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !to.is_empty() && to != from {
                    edges.insert(to);
                }
            }
        }
        // Peel off modules that depend on nothing left; a cycle remains.
        let mut left = deps.clone();
        while let Some(leaf) = left
            .iter()
            .find(|(_, to)| to.iter().all(|t| !left.contains_key(t)))
            .map(|(m, _)| m.clone())
        {
            left.remove(&leaf);
        }
        assert!(left.is_empty(), "import cycle among {left:?}");
        assert!(deps.contains_key("proxy") && deps.contains_key("server"));
    }
}
