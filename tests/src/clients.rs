//! The Redis client libraries the end-to-end tests drive through the
//! scripts in `tests/clients/`: where `cargo xtask setup` installs them and
//! where the tests look for them, in one place.

use crate::bin::workspace_root;
use std::path::PathBuf;

/// `tests/clients/`: the client scripts, `requirements.txt` (redis-py) and
/// `package.json` with its `package-lock.json` (node-redis, ioredis).
pub fn clients_dir() -> PathBuf {
    workspace_root().join("tests").join("clients")
}

/// The Python virtual environment that holds redis-py (git-ignored).
pub fn python_venv() -> PathBuf {
    clients_dir().join(".venv")
}

/// The virtual environment's interpreter: running it is enough for scripts
/// to import what the environment holds, no activation needed.
pub fn venv_python() -> PathBuf {
    python_venv().join("bin").join("python")
}

/// Where npm installs node-redis and ioredis (git-ignored); Node.js finds
/// them from the scripts beside it without any `NODE_PATH`.
pub fn node_modules() -> PathBuf {
    clients_dir().join("node_modules")
}
