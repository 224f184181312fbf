//! Runs a service (the server or the proxy) on its own OS thread, with its
//! own single-threaded Tokio runtime and `LocalSet`.
//!
//! Like Redis, each service is single-threaded: its core machine lives in an
//! `Rc<RefCell<…>>` and needs no locks. `kv up` runs two such threads in one
//! process, while the main thread waits for signals.

use super::shutdown::{self, Shutdown, ShutdownTrigger};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Why a service could not start or did not stop cleanly.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// The OS thread could not be created.
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        /// The service.
        name: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// The Tokio runtime could not be built.
    #[error("cannot start the {name} runtime: {source}")]
    Runtime {
        /// The service.
        name: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// The listening address could not be bound.
    #[error("{name} cannot listen on {addr}: {source}")]
    Bind {
        /// The service.
        name: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// The service thread panicked.
    #[error("the {name} thread panicked")]
    Panicked {
        /// The service.
        name: &'static str,
    },
}

/// A service running on its thread.
#[derive(Debug)]
pub struct Service {
    name: &'static str,
    addr: SocketAddr,
    trigger: ShutdownTrigger,
    done: Option<oneshot::Receiver<()>>,
    thread: JoinHandle<()>,
}

impl Service {
    /// Starts a service: binds `listen` on the new thread, then runs
    /// `body(listener, shutdown)` there until it returns. Returns once the
    /// socket is bound, so the caller can announce the actual address.
    pub fn spawn<F, Fut>(
        name: &'static str,
        listen: SocketAddr,
        body: F,
    ) -> Result<Self, ServiceError>
    where
        F: FnOnce(TcpListener, Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let (trigger, shutdown) = shutdown::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("kv-{name}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(source) => {
                        let _ = ready_tx.send(Err(ServiceError::Runtime { name, source }));
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    let listener = match super::net::bind(listen) {
                        Ok(l) => l,
                        Err(source) => {
                            let _ = ready_tx.send(Err(ServiceError::Bind {
                                name,
                                addr: listen,
                                source,
                            }));
                            return;
                        }
                    };
                    let addr = listener.local_addr().unwrap_or(listen);
                    let _ = ready_tx.send(Ok(addr));
                    body(listener, shutdown).await;
                });
                // Tasks still on the LocalSet (the proxy's upstream and timer
                // tasks) are dropped here, before the thread reports done.
                drop(local);
                drop(runtime);
                let _ = done_tx.send(());
            })
            .map_err(|source| ServiceError::Thread { name, source })?;
        match ready_rx.recv() {
            Ok(Ok(addr)) => Ok(Service {
                name,
                addr,
                trigger,
                done: Some(done_rx),
                thread,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(ServiceError::Panicked { name })
            }
        }
    }

    /// The service's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The address the service actually listens on (the real port when 0
    /// was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Completes when the service stops by itself (it should not, short of a
    /// panic). Cancel-safe; completes at once on every call after the first
    /// completion.
    pub async fn stopped(&mut self) {
        if let Some(done) = self.done.as_mut() {
            let _ = done.await;
            self.done = None;
        }
    }

    /// Asks the service to stop gracefully and waits for its thread.
    pub fn shutdown(self) -> Result<(), ServiceError> {
        self.trigger.trigger();
        let name = self.name;
        self.thread
            .join()
            .map_err(|_| ServiceError::Panicked { name })
    }
}
