//! The long-running commands of the `kv` binary: `kv server`, `kv proxy` and
//! `kv up`. Each service runs on its own thread (a `Service`); the calling
//! thread announces the addresses, waits for Ctrl-C or SIGTERM, and stops
//! the services gracefully.
//!
//! The announcement lines on stdout are a contract (tests parse them):
//! `kv server listening on <addr>`, `kv proxy listening on <addr> (upstream
//! <addr>)`, and `kv server stopped` / `kv proxy stopped` at the end.

use crate::args::{ProxyArgs, ServerArgs, UpArgs};
use crate::proxy::{self, ProxyOptions};
use crate::runtime::service::{Service, ServiceError};
use crate::runtime::shutdown::Signals;
use crate::server::{self, ServerOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use thiserror::Error;
use tracing::{info, warn};

/// Why a command failed.
#[derive(Debug, Error)]
pub enum AppError {
    /// A service failed to start or stop.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The main thread's runtime or signal handlers could not be set up.
    #[error("cannot set up signal handling: {0}")]
    Signals(io::Error),
    /// A service stopped without being asked to.
    #[error("the {0} stopped unexpectedly")]
    Stopped(&'static str),
    /// The server's log could not be opened or replayed.
    #[error(transparent)]
    Persist(#[from] crate::persist::PersistError),
}

/// `kv server`.
pub fn run_server(args: &ServerArgs) -> Result<(), AppError> {
    let waiter = SignalWaiter::new()?;
    let mut server = start_server(args.options(rand::random()))?;
    let stopped = waiter.wait(&mut [&mut server]);
    finish(server)?;
    stopped
}

/// `kv proxy`.
pub fn run_proxy(args: &ProxyArgs) -> Result<(), AppError> {
    let waiter = SignalWaiter::new()?;
    let mut proxy = start_proxy(args.options(rand::random()))?;
    let stopped = waiter.wait(&mut [&mut proxy]);
    finish(proxy)?;
    stopped
}

/// `kv up`: a server, and a proxy forwarding to the server's actual address.
pub fn run_up(args: &UpArgs) -> Result<(), AppError> {
    let waiter = SignalWaiter::new()?;
    // In front of a cluster there is no server of kv's to start.
    let mut server = match args.upstream_cluster.first() {
        Some(_) => None,
        None => Some(start_server(args.server_options(rand::random()))?),
    };
    let upstream = server
        .as_ref()
        .map_or_else(|| args.upstream_cluster[0], Service::local_addr);
    let mut proxy = match start_proxy(args.proxy_options(upstream, rand::random())) {
        Ok(p) => p,
        Err(e) => {
            if let Some(server) = server {
                let _ = finish(server);
            }
            return Err(e);
        }
    };
    let addr = connect_addr(proxy.local_addr());
    let (host, port) = (addr.ip(), addr.port());
    let redis_cli = if host == IpAddr::V4(Ipv4Addr::LOCALHOST) {
        format!("redis-cli -p {port}")
    } else {
        format!("redis-cli -h {host} -p {port}")
    };
    let kv_cli = if addr == SocketAddr::from(([127, 0, 0, 1], 7071)) {
        "kv cli".to_string()
    } else {
        format!("kv cli --connect {addr}")
    };
    announce(&format!(
        "connect with: telnet {host} {port}\n          or: {redis_cli}\n          or: {kv_cli}"
    ));
    let stopped = match &mut server {
        Some(server) => waiter.wait(&mut [server, &mut proxy]),
        None => waiter.wait(&mut [&mut proxy]),
    };
    // The proxy first, so that requests it forwards can still be answered
    // while it drains its clients.
    let proxy_done = finish(proxy);
    let server_done = server.map_or(Ok(()), finish);
    proxy_done?;
    server_done?;
    stopped
}

fn start_server(options: ServerOptions) -> Result<Service, AppError> {
    crate::runtime::net::raise_nofile_limit();
    // The log is replayed before the port is bound: clients never see a
    // half-loaded store, and a damaged log fails the start with its error.
    let prepared = server::prepare(&options)?;
    match &options.persistence {
        Some(p) => {
            info!(data_dir = %p.data_dir.display(), fsync = p.fsync.name(), "persistence on")
        }
        None => info!("persistence off (--in-memory)"),
    }
    let metrics = bind_metrics(options.metrics)?;
    let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
    let service = Service::spawn("server", options.listen, move |listener, shutdown| {
        server::run_prepared(listener, options, prepared, to_tokio(metrics), shutdown)
    })?;
    announce(&format!("kv server listening on {}", service.local_addr()));
    if let Some(addr) = metrics_addr {
        announce(&format!(
            "kv server metrics on http://{}/metrics",
            connect_addr(addr)
        ));
    }
    Ok(service)
}

fn start_proxy(mut options: ProxyOptions) -> Result<Service, AppError> {
    crate::runtime::net::raise_nofile_limit();
    let upstream = match &options.upstream_cluster {
        Some(seeds) => format!("cluster {}", seeds.join(",")),
        None => options.upstream.to_string(),
    };
    // Bound here, before the service thread starts, so that its address
    // can be announced with the proxy's.
    let http = match options.http.take() {
        Some(http) => {
            let listener = bind_std(http.listen).map_err(|error| ServiceError::Bind {
                name: "console",
                addr: http.listen,
                error,
            })?;
            Some((listener, http))
        }
        None => None,
    };
    let http_addr = http.as_ref().and_then(|(l, _)| l.local_addr().ok());
    let metrics = bind_metrics(options.metrics)?;
    let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
    let service = Service::spawn(
        "proxy",
        options.listen,
        move |listener, shutdown| async move {
            let http =
                http.and_then(|(std_listener, opts)| {
                    match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => Some((l, opts)),
                        Err(e) => {
                            warn!("cannot serve the console: {e}");
                            None
                        }
                    }
                });
            proxy::run(listener, http, to_tokio(metrics), options, shutdown).await
        },
    )?;
    announce(&format!(
        "kv proxy listening on {} (upstream {upstream})",
        service.local_addr()
    ));
    if let Some(addr) = http_addr {
        announce(&format!("kv console on http://{}/", connect_addr(addr)));
    }
    if let Some(addr) = metrics_addr {
        announce(&format!(
            "kv proxy metrics on http://{}/metrics",
            connect_addr(addr)
        ));
    }
    Ok(service)
}

/// Binds the `/metrics` listener, if one is asked for, before the service
/// starts: a port in use fails the start, as for the main listener.
fn bind_metrics(addr: Option<SocketAddr>) -> Result<Option<std::net::TcpListener>, AppError> {
    addr.map(|addr| {
        bind_std(addr).map_err(|error| {
            AppError::Service(ServiceError::Bind {
                name: "metrics",
                addr,
                error,
            })
        })
    })
    .transpose()
}

/// A listener bound by [`bind_std`], on the service's runtime; a failure
/// (which only a broken runtime gives) is logged and leaves it unserved.
fn to_tokio(listener: Option<std::net::TcpListener>) -> Option<tokio::net::TcpListener> {
    listener.and_then(|l| match tokio::net::TcpListener::from_std(l) {
        Ok(l) => Some(l),
        Err(e) => {
            warn!("cannot serve /metrics: {e}");
            None
        }
    })
}

/// Binds a listening socket for a runtime that is not started yet.
fn bind_std(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Stops a service and says so.
fn finish(service: Service) -> Result<(), AppError> {
    let name = service.name();
    service.shutdown()?;
    announce(&format!("kv {name} stopped"));
    Ok(())
}

/// Prints a line to stdout and flushes it at once: tests and scripts wait
/// for these lines.
fn announce(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Where a client should connect to reach a socket bound to `addr`: an
/// unspecified address (0.0.0.0) is reachable on loopback.
fn connect_addr(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip = match addr {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

/// The main thread's small runtime with the signal handlers, installed
/// before any service starts so that a signal right after the announcement
/// is handled rather than killing the process.
struct SignalWaiter {
    runtime: tokio::runtime::Runtime,
    signals: Signals,
}

impl SignalWaiter {
    fn new() -> Result<Self, AppError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AppError::Signals)?;
        let signals = {
            let _guard = runtime.enter();
            Signals::install().map_err(AppError::Signals)?
        };
        Ok(SignalWaiter { runtime, signals })
    }

    /// Waits for a signal, or for a service to stop by itself (an error).
    fn wait(mut self, services: &mut [&mut Service]) -> Result<(), AppError> {
        self.runtime.block_on(async {
            let any_stopped = async {
                let waits = services.iter_mut().map(|s| {
                    let name = s.name();
                    Box::pin(async move {
                        s.stopped().await;
                        name
                    })
                });
                futures_select_all(waits).await
            };
            tokio::select! {
                signal = self.signals.recv() => {
                    info!("{signal} received, shutting down");
                    Ok(())
                }
                name = any_stopped => {
                    warn!("the {name} stopped unexpectedly");
                    Err(AppError::Stopped(name))
                }
            }
        })
    }
}

/// Completes with the output of the first of `futures` to complete.
async fn futures_select_all<F: std::future::Future + Unpin>(
    futures: impl IntoIterator<Item = F>,
) -> F::Output {
    let mut futures: Vec<F> = futures.into_iter().collect();
    std::future::poll_fn(|cx| {
        for f in futures.iter_mut() {
            if let std::task::Poll::Ready(out) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(out);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_reached_on_loopback() {
        assert_eq!(
            connect_addr("0.0.0.0:7071".parse().unwrap()),
            "127.0.0.1:7071".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            connect_addr("[::]:1".parse().unwrap()),
            "[::1]:1".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            connect_addr("10.1.2.3:5".parse().unwrap()),
            "10.1.2.3:5".parse::<SocketAddr>().unwrap()
        );
    }
}
