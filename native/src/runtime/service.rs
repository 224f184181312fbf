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
///
/// Each message ends with its cause, so the cause is not also returned by
/// `source()` (the fields are not named `source`): a printer that walks the
/// chain, such as anyhow's `{:#}`, would say it twice.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// The OS thread could not be created.
    #[error("cannot start the {name} thread: {error}")]
    Thread {
        /// The service.
        name: &'static str,
        /// The cause.
        error: io::Error,
    },
    /// The Tokio runtime could not be built.
    #[error("cannot start the {name} runtime: {error}")]
    Runtime {
        /// The service.
        name: &'static str,
        /// The cause.
        error: io::Error,
    },
    /// The listening address could not be bound.
    #[error("{name} cannot listen on {addr}: {error}")]
    Bind {
        /// The service.
        name: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        error: io::Error,
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
                    Err(error) => {
                        let _ = ready_tx.send(Err(ServiceError::Runtime { name, error }));
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    let listener = match super::net::bind(listen) {
                        Ok(l) => l,
                        Err(error) => {
                            let _ = ready_tx.send(Err(ServiceError::Bind {
                                name,
                                addr: listen,
                                error,
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
            .map_err(|error| ServiceError::Thread { name, error })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole chain, as anyhow's `{:#}` prints it.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut text = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            text = format!("{text}: {c}");
            cause = c.source();
        }
        text
    }

    #[test]
    fn a_failed_bind_says_its_os_error_once() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = Service::spawn("server", addr, |_, _| async {}).unwrap_err();
        assert!(matches!(err, ServiceError::Bind { .. }), "{err:?}");
        let text = chain(&err);
        assert!(
            text.starts_with(&format!("server cannot listen on {addr}: ")),
            "{text}"
        );
        assert_eq!(text.matches("(os error").count(), 1, "{text}");
    }
}
