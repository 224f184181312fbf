//! Graceful shutdown: a signal that crosses threads, and the OS signals that
//! raise it.
//!
//! A service runs on its own thread and runtime, while Ctrl-C and SIGTERM are
//! caught on the main thread; a `watch` channel works across runtimes, so it
//! carries the request from one to the other.

use std::io;
use std::time::Duration;
use tokio::sync::watch;

/// How long connections get, after a shutdown request, to finish writing
/// the replies to what they already received.
pub const GRACE_PERIOD: Duration = Duration::from_secs(2);

/// Raises the shutdown request of one service.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl ShutdownTrigger {
    /// Asks every holder of the matching [`Shutdown`] to stop.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

/// The receiving side of a shutdown request; cheap to clone into every task.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// Whether shutdown has been requested.
    pub fn is_requested(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes once shutdown is requested (at once if it already was).
    /// Cancel-safe. If the trigger is dropped without firing, the request is
    /// taken as made: nobody is left to keep the service running.
    pub async fn requested(&mut self) {
        let _ = self.rx.wait_for(|&stop| stop).await;
    }
}

/// A new trigger and its receiver.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

/// Listens for Ctrl-C (SIGINT) and SIGTERM.
///
/// The handlers are installed when this is created, not when it is first
/// awaited, so that a signal sent right after a service announced itself is
/// caught rather than killing the process.
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; needs a Tokio runtime with I/O enabled.
    pub fn install() -> io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// Completes when one of the signals arrives; returns its name.
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_is_seen_by_every_clone_even_late() {
        let (trigger, mut a) = channel();
        let mut b = a.clone();
        assert!(!a.is_requested());
        trigger.trigger();
        a.requested().await;
        b.requested().await;
        assert!(b.is_requested());
        // A clone made afterwards sees it at once too.
        let mut c = a.clone();
        c.requested().await;
    }

    #[tokio::test]
    async fn dropped_trigger_counts_as_shutdown() {
        let (trigger, mut a) = channel();
        drop(trigger);
        a.requested().await;
    }
}
