//! A connection's own state, the same at the server and at the proxy, and
//! what the commands answered locally may ask of the node that answers
//! them.

use crate::auth::Password;
use bytes::Bytes;

/// Which kind of node answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `kv server`.
    Server,
    /// `kv proxy`.
    Proxy,
}

impl Role {
    /// The name `INFO` and `HELLO` give.
    pub fn name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Proxy => "proxy",
        }
    }
}

/// One client connection's state: what `AUTH`, `QUIT` and `CLIENT` change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The connection's number, unique within its node (`CLIENT ID`).
    pub id: u64,
    /// Whether the connection may run every command.
    pub authenticated: bool,
    /// The connection asked to be closed (`QUIT`): once its replies are
    /// written.
    pub closing: bool,
    /// The names a client gave itself; boxed, since most never do and
    /// every idle connection pays for what is inline.
    names: Option<Box<Names>>,
}

/// What `CLIENT SETNAME` and `CLIENT SETINFO` set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    /// Set with `CLIENT SETNAME`.
    pub name: Option<Bytes>,
    /// Set with `CLIENT SETINFO LIB-NAME`.
    pub lib_name: Option<Bytes>,
    /// Set with `CLIENT SETINFO LIB-VER`.
    pub lib_ver: Option<Bytes>,
}

impl Session {
    /// A new connection's session; without a password to give, it starts
    /// authenticated.
    pub fn new(id: u64, authenticated: bool) -> Session {
        Session {
            id,
            authenticated,
            closing: false,
            names: None,
        }
    }

    /// The names the client gave itself, if any.
    pub fn names(&self) -> Option<&Names> {
        self.names.as_deref()
    }

    /// The names, to set one.
    pub fn names_mut(&mut self) -> &mut Names {
        self.names.get_or_insert_with(Box::default)
    }
}

/// What a locally answered command may ask of the node it reached.
pub trait Node {
    /// Server or proxy.
    fn role(&self) -> Role;
    /// The text of `INFO`.
    fn info(&self) -> String;
    /// The password connections must give, if any.
    fn password(&self) -> Option<&Password>;
    /// The configuration parameters `CONFIG GET` reports, with their values.
    fn config(&self) -> Vec<(&'static str, String)>;
}

/// What a [`LocalHandler`](crate::command::table::LocalHandler) works with.
pub struct Local<'a> {
    /// The connection's session, which the handler may change.
    pub session: &'a mut Session,
    /// The node that answers.
    pub node: &'a dyn Node,
}
