//! The proxy's TCP clients ([`ClientKind::Stream`]): each runs the shared
//! [connection loop](crate::conn) around its slot in the proxy.

use super::{ProxyHandle, ProxyOptions};
use crate::conn::{self, Conn, OutputProbe, Wake};
use crate::runtime::net;
use crate::runtime::shutdown::Shutdown;
use bytes::BytesMut;
use kv_core::{ClientId, ClientKind, ConnConfig, End, Owed, Stall};
use std::io;
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
            let client = TcpClient::new(handle.clone(), stream);
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
}

impl TcpClient {
    fn new(handle: ProxyHandle, stream: TcpStream) -> Self {
        let (id, notify) = handle.add_client(ClientKind::Stream);
        TcpClient {
            handle,
            id,
            notify,
            stream,
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
        self.handle.poll_client_transmit(self.id)
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
        tokio::select! {
            biased;
            _ = self.notify.notified() => Ok(Wake::Session),
            ready = self.stream.readable(), if reading => {
                ready?;
                let (handle, id) = (&self.handle, self.id);
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
