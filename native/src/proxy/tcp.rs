//! The proxy's TCP clients ([`ClientKind::Stream`]): each runs the shared
//! [connection loop](crate::conn) around its slot in the proxy, and owns
//! its dedicated upstream connection if the core pins it to one (see the
//! core's `proxy/tunnel.rs`): the bytes of both sockets meet in the core,
//! in this task.

use super::{ProxyHandle, ProxyOptions};
use crate::conn::{self, Conn, OutputProbe, Wake};
use crate::runtime::net;
use crate::runtime::net::ReadOutcome;
use crate::runtime::shutdown::Shutdown;
use bytes::BytesMut;
use kv_core::{ClientId, ClientKind, ConnConfig, End, OutputLimit, Owed, Stall, TunnelState};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tracing::{debug, Instrument};

/// Accepts TCP clients on `listener` until `shutdown`, then lets them
/// finish (within the grace period).
pub(super) async fn serve(
    handle: &ProxyHandle,
    listener: TcpListener,
    options: &ProxyOptions,
    shutdown: Shutdown,
) {
    let policy = ConnConfig::for_proxy_client(
        options.idle_timeout,
        options.proxy.request_timeout,
        options.output_limit,
    );
    net::accept_loop(
        listener,
        options.max_clients,
        shutdown,
        handle,
        |stream, peer, shutdown| {
            let client = TcpClient::new(
                handle.clone(),
                stream,
                options.upstream,
                options.output_limit,
            );
            let span = tracing::debug_span!("client", %peer, id = client.id.0);
            async move {
                let mut client = client;
                debug!("client accepted");
                let epoch = client.handle.epoch();
                conn::drive(&mut client, policy, epoch, shutdown).await;
            }
            .instrument(span)
        },
    )
    .await;
}

/// One TCP client of the proxy.
struct TcpClient {
    handle: ProxyHandle,
    id: ClientId,
    notify: Rc<Notify>,
    stream: TcpStream,
    /// Where its dedicated connection goes, and the output limit it is
    /// held to while it has one.
    upstream: SocketAddr,
    output_limit: OutputLimit,
    tunnel: Tunnel,
}

/// A client's dedicated upstream connection, as the driver carries it.
#[derive(Default)]
struct Tunnel {
    connecting: Option<Pin<Box<dyn Future<Output = io::Result<TcpStream>>>>>,
    stream: Option<TcpStream>,
    /// Taken from the core, not yet written (taken again once empty, so
    /// the core's own buffer bounds what a client can queue).
    out: BytesMut,
}

impl TcpClient {
    fn new(
        handle: ProxyHandle,
        stream: TcpStream,
        upstream: SocketAddr,
        output_limit: OutputLimit,
    ) -> Self {
        let (id, notify) = handle.add_client(ClientKind::Stream);
        TcpClient {
            handle,
            id,
            notify,
            stream,
            upstream,
            output_limit,
            tunnel: Tunnel::default(),
        }
    }

    /// Starts the dedicated connection the core asks for, and writes what
    /// it has for it as far as the socket takes it now.
    fn pump_tunnel(&mut self) {
        let t = &mut self.tunnel;
        if t.stream.is_some() && self.handle.client_status(self.id).tunnel == TunnelState::None {
            // Given back (its transaction is over): the connection goes.
            debug!("dedicated upstream connection given back");
            t.stream = None;
            t.out.clear();
            return;
        }
        if t.stream.is_none() {
            if t.connecting.is_none()
                && self.handle.client_status(self.id).tunnel == TunnelState::Wanted
            {
                debug!("opening a dedicated upstream connection");
                t.connecting = Some(Box::pin(TcpStream::connect(self.upstream)));
            }
            return;
        }
        if t.out.is_empty() {
            if let Some(more) = self.handle.poll_tunnel_transmit(self.id) {
                t.out = more;
            }
        }
        let Some(stream) = &t.stream else { return };
        while !t.out.is_empty() {
            match stream.try_write(&t.out) {
                Ok(n) => {
                    let _ = t.out.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!("dedicated upstream connection failed: {e}");
                    t.stream = None;
                    self.handle.handle_tunnel_closed(self.id);
                    return;
                }
            }
        }
    }
}

/// Removes the client from the proxy however its task ends (including an
/// abort at the end of the grace period).
impl Drop for TcpClient {
    fn drop(&mut self) {
        self.handle.remove_client(self.id);
    }
}

impl Conn for TcpClient {
    type Output = BytesMut;

    fn poll_output(&mut self) -> Option<BytesMut> {
        if self.handle.client_status(self.id).resumable {
            self.handle.handle_client_resume(self.id);
        }
        self.pump_tunnel();
        self.handle.poll_client_transmit(self.id)
    }

    /// A client with a dedicated connection listens to it, as a client of
    /// the server would (a subscriber waits for messages): not idle, and
    /// held to the connection's output limit.
    fn subscriber_limit(&self) -> Option<OutputLimit> {
        (self.handle.client_status(self.id).tunnel != TunnelState::None)
            .then_some(self.output_limit)
    }

    async fn write(&mut self, output: BytesMut) -> io::Result<()> {
        self.stream.write_all(&output).await
    }

    fn output_len(output: &BytesMut) -> usize {
        output.len()
    }

    fn held(&self) -> usize {
        self.handle.client_status(self.id).held
    }

    fn output_probe(&self) -> Option<OutputProbe> {
        let (handle, id) = (self.handle.clone(), self.id);
        Some(OutputProbe {
            news: self.notify.clone(),
            held: Box::new(move || handle.client_status(id).held),
        })
    }

    async fn wait(&mut self, reading: bool) -> io::Result<Wake> {
        let (handle, id) = (&self.handle, self.id);
        let t = &mut self.tunnel;
        let tunnel_reading = t.stream.is_some() && handle.tunnel_wants_input(id);
        let tunnel_writing = t.stream.is_some() && !t.out.is_empty();
        tokio::select! {
            biased;
            _ = self.notify.notified() => Ok(Wake::Session),
            connected = async { t.connecting.as_mut().expect("guarded").await },
                if t.connecting.is_some() =>
            {
                t.connecting = None;
                match connected {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        t.stream = Some(stream);
                        handle.handle_tunnel_connected(id);
                    }
                    Err(e) => {
                        debug!("cannot open a dedicated upstream connection: {e}");
                        handle.handle_tunnel_closed(id);
                    }
                }
                Ok(Wake::Session)
            }
            ready = async { t.stream.as_ref().expect("guarded").readable().await },
                if tunnel_reading =>
            {
                let stream = t.stream.as_ref().expect("guarded");
                let outcome = ready.and_then(|()| {
                    net::read_ready(stream, |d| handle.handle_tunnel_input(id, d))
                });
                match outcome {
                    Ok(ReadOutcome::Closed) | Err(_) => {
                        t.stream = None;
                        handle.handle_tunnel_closed(id);
                    }
                    Ok(_) => {}
                }
                Ok(Wake::Session)
            }
            _ = async { t.stream.as_ref().expect("guarded").writable().await },
                if tunnel_writing => Ok(Wake::Session),
            ready = self.stream.readable(), if reading => {
                ready?;
                Ok(net::read_ready(&self.stream, |d| handle.handle_client_input(id, d))?.into())
            }
        }
    }

    fn wants_input(&self) -> bool {
        self.handle.client_status(self.id).wants_input
    }

    fn owed(&self) -> Owed {
        self.handle.client_status(self.id).owed()
    }

    fn progress(&self) -> (bool, u64) {
        self.handle.client_progress(self.id)
    }

    async fn close(&mut self, end: End) {
        match end {
            End::TimedOut(stall) => {
                self.handle.update_stats(|s| s.connections_timed_out += 1);
                let mid_command =
                    stall == Stall::Input && self.handle.client_is_mid_command(self.id);
                debug!(?stall, mid_command, "client timed out");
            }
            End::OutputLimit => {
                // A client the core cut off itself is counted already.
                if !self.handle.client_status(self.id).cut {
                    self.handle
                        .update_stats(|s| s.output_limit_disconnections += 1);
                }
                debug!("client over its output-buffer limit: disconnected");
            }
            End::Finished | End::Shutdown => net::close_gently(&mut self.stream).await,
            End::Closed => {}
        }
    }
}
