//! The one connection loop every client connection runs (server and proxy,
//! TCP and WebSocket): write what the session has, ask the core's
//! [`ConnPolicy`] whether the connection is over, wait for input, the
//! session, shutdown or the policy's next deadline, and close the way the
//! end calls for.
//!
//! What differs between drivers is behind [`Conn`]: how input is read and
//! handed to the session, how output is written, and what wakes the
//! connection when the session has news. Timing rules (idle, stalled
//! output, half-close, shutdown) are all the core's.

use crate::runtime::clock::{Epoch, Timer};
use crate::runtime::net::ReadOutcome;
use crate::runtime::shutdown::Shutdown;
use kv_core::{ConnConfig, ConnPolicy, End, Owed};
use std::io;

/// What a wait of a connection ended with.
#[derive(Debug)]
pub(crate) enum Wake {
    /// The session may have news (replies ready, the log stored a write).
    Session,
    /// Input arrived and was handed to the session.
    Input,
    /// The peer closed its sending side.
    Eof,
    /// Nothing after all (a stale readiness): wait again.
    Nothing,
}

impl From<ReadOutcome> for Wake {
    fn from(outcome: ReadOutcome) -> Wake {
        match outcome {
            ReadOutcome::Data => Wake::Input,
            ReadOutcome::Closed => Wake::Eof,
            ReadOutcome::NotReady => Wake::Nothing,
        }
    }
}

/// One client connection, as the loop drives it: a transport and the
/// session behind it.
pub(crate) trait Conn {
    /// What is written to the peer in one go.
    type Output;

    /// Output the session has for the peer (processing what it held back,
    /// if it can now).
    fn poll_output(&mut self) -> Option<Self::Output>;

    /// Writes one output to the peer.
    async fn write(&mut self, output: Self::Output) -> io::Result<()>;

    /// The bytes of one output, for the output-buffer limit.
    fn output_len(output: &Self::Output) -> usize;

    /// The bytes the session holds for the peer that it has not handed out
    /// yet (for the output-buffer limit, with what is being written).
    fn held(&self) -> usize;

    /// For a session whose output grows while a write waits (the proxy's,
    /// as replies arrive): what wakes the loop when it grew, and how much
    /// it holds then, so that a client that stops reading is held to its
    /// output limit while its write is stuck. `None` for a session whose
    /// output only grows when the loop asks for it.
    fn output_probe(&self) -> Option<OutputProbe> {
        None
    }

    /// For a session that listens for messages (a subscriber): the output
    /// limit it is held to instead of the connection's, and that it is
    /// never idle. `None` for any other.
    fn subscriber_limit(&self) -> Option<kv_core::OutputLimit> {
        None
    }

    /// Waits for input (only if `reading`) or news from the session.
    /// Cancel-safe.
    async fn wait(&mut self, reading: bool) -> io::Result<Wake>;

    /// Whether the session takes input now (it may be throttling).
    fn wants_input(&self) -> bool;

    /// What the session still owes the peer.
    fn owed(&self) -> Owed;

    /// Whether the session holds part of a command, and how many requests
    /// it has read: a command must be complete within the idle timeout of
    /// its start (see [`ConnPolicy::handle_progress`]). Transports whose
    /// messages are whole commands never hold part of one.
    fn progress(&self) -> (bool, u64) {
        (false, 0)
    }

    /// Closes the connection the way `end` calls for.
    async fn close(&mut self, end: End);
}

/// See [`Conn::output_probe`].
pub(crate) struct OutputProbe {
    /// Notified when the session has news.
    pub news: std::rc::Rc<tokio::sync::Notify>,
    /// The bytes the session holds now.
    pub held: Box<dyn Fn() -> usize>,
}

/// Completes when the probe's session has news (never without a probe).
async fn news(probe: Option<&OutputProbe>) {
    match probe {
        Some(p) => p.news.notified().await,
        None => std::future::pending().await,
    }
}

/// Drives `conn` until it ends, and returns why.
pub(crate) async fn drive<C: Conn>(
    conn: &mut C,
    config: ConnConfig,
    epoch: Epoch,
    mut shutdown: Shutdown,
) -> End {
    // One clock read per wake-up and one per finished write: the policy's
    // deadlines are far coarser than the microseconds between them.
    let mut now = epoch.now();
    let mut policy = ConnPolicy::new(config, now);
    let mut timer = Timer::new();
    let end = 'conn: loop {
        // Everything the session has goes out before anything else; a
        // client that takes none of it for the idle timeout is cut off.
        while let Some(output) = conn.poll_output() {
            policy.handle_subscriber(conn.subscriber_limit());
            let writing_len = C::output_len(&output);
            policy.handle_output_held(writing_len + conn.held(), now);
            let writing = Owed {
                output: true,
                ..Owed::default()
            };
            if let Some(end) = policy.poll_end(writing) {
                break 'conn end;
            }
            policy.handle_write_started(now);
            let probe = conn.output_probe();
            let write = conn.write(output);
            tokio::pin!(write);
            loop {
                tokio::select! {
                    biased;
                    written = &mut write => match written {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::debug!("write failed: {e}");
                            break 'conn End::Closed;
                        }
                    },
                    () = news(probe.as_ref()) => {
                        let held = probe.as_ref().map_or(0, |p| (p.held)());
                        policy.handle_output_held(writing_len + held, epoch.now());
                        if let Some(end) = policy.poll_end(writing) {
                            break 'conn end;
                        }
                    }
                    _ = timer.until(&epoch, policy.poll_timeout()) => {
                        policy.handle_timeout(epoch.now());
                        // Output is on its way, so only a timeout, the
                        // output limit, or the end of a half-close wait can
                        // end the connection.
                        if let Some(end) = policy.poll_end(writing) {
                            break 'conn end;
                        }
                    }
                }
            }
            now = epoch.now();
            policy.handle_write_done(now);
        }
        policy.handle_subscriber(conn.subscriber_limit());
        policy.handle_output_held(conn.held(), now);
        let owed = conn.owed();
        policy.handle_owed(owed.replies > 0, now);
        let (mid_command, requests_read) = conn.progress();
        policy.handle_progress(mid_command, requests_read, now);
        // Checked here as well as in the select below, where a client that
        // keeps sending would always win the race against the request.
        if shutdown.is_requested() && !policy.is_draining() {
            policy.handle_shutdown(now);
        }
        if let Some(end) = policy.poll_end(owed) {
            break end;
        }
        let reading = policy.wants_input() && conn.wants_input();
        tokio::select! {
            biased;
            woke = conn.wait(reading) => {
                now = epoch.now();
                match woke {
                    Ok(Wake::Input) => policy.handle_input(now),
                    Ok(Wake::Eof) => policy.handle_peer_closed(now),
                    Ok(Wake::Session | Wake::Nothing) => {}
                    Err(e) => {
                        tracing::debug!("read failed: {e}");
                        break End::Closed;
                    }
                }
            }
            _ = shutdown.requested(), if !policy.is_draining() => {
                now = epoch.now();
                policy.handle_shutdown(now);
            }
            _ = timer.until(&epoch, policy.poll_timeout()) => {
                now = epoch.now();
                policy.handle_timeout(now);
            }
        }
    };
    conn.close(end).await;
    tracing::debug!(?end, "connection closed");
    end
}
