//! The proxy's lanes in front of a Redis Cluster (`--upstream-cluster`).
//!
//! Each lane's upstream "connection" is a [`Cluster`] pipe in this
//! process: this task hands it what the proxy writes upstream and hands
//! the proxy what it answers, and runs one connection task per node the
//! pipe asks for ([`ClusterEvent::Connect`]). Routing, redirects, retries
//! and the merging of replies are the core's (see [`kv_core::cluster`]).

use super::ProxyHandle;
use crate::runtime::clock::Epoch;
use bytes::BytesMut;
use kv_core::cluster::{Cluster, ClusterConfig, ClusterEvent, ClusterFacts, NodeId};
use kv_core::{Lane, Reconnect};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Room made in a node's receive buffer before each read.
const READ_CHUNK: usize = 64 * 1024;

/// A node's connection task, and the wake-up of its writer.
type NodeTask = (JoinHandle<()>, Rc<Notify>);

/// What the lane's task and its node tasks share.
struct Shared {
    cluster: RefCell<Cluster>,
    epoch: Epoch,
    /// Wakes the lane's task: the pipe has output, events or a new
    /// deadline.
    lane: Notify,
    /// Per node, its task and the wake-up of its writer.
    nodes: RefCell<HashMap<NodeId, NodeTask>>,
    /// What the proxy's `INFO` was last given of the pipe.
    facts: RefCell<Option<ClusterFacts>>,
    connect_timeout: std::time::Duration,
}

/// Runs the lane in front of the cluster that `seeds` belong to, forever.
pub(super) async fn run(handle: ProxyHandle, seeds: Vec<String>, lane: Lane) {
    let epoch = handle.epoch();
    let timeout = handle.request_timeout();
    let config = ClusterConfig {
        // The pipe answers a request that cannot be carried out before
        // the proxy gives up on it (which would reset the whole lane).
        request_timeout: timeout.mul_f64(0.8),
        // What the proxy admitted, the pipe reads.
        limits: handle.limits(),
        hash_seed: handle.hash_seed(),
        ..ClusterConfig::default()
    };
    let shared = Rc::new(Shared {
        cluster: RefCell::new(Cluster::new(seeds, config, epoch.now())),
        epoch,
        lane: Notify::new(),
        nodes: RefCell::new(HashMap::new()),
        facts: RefCell::new(None),
        connect_timeout: Reconnect::connect_timeout(timeout),
    });
    loop {
        handle.handle_upstream_connecting(lane);
        handle.handle_upstream_connected(lane);
        loop {
            pump(&handle, &shared, lane);
            if handle.wake(lane).reset_requested.get() {
                break;
            }
            let next = shared.cluster.borrow().poll_timeout();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(epoch.to_tokio(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = handle.wake(lane).ready.notified() => {}
                _ = handle.wake(lane).readable.notified() => {}
                _ = handle.wake(lane).reset.notified() => {}
                _ = shared.lane.notified() => {}
                _ = sleep => shared.cluster.borrow_mut().handle_timeout(epoch.now()),
            }
        }
        // The proxy gave up on the pipe (a request timed out): what it
        // asked is forgotten and it starts over; the nodes' connections
        // stay.
        debug!("cluster pipe reset by the proxy");
        shared.cluster.borrow_mut().reset_proxy();
        handle.handle_upstream_closed(lane);
    }
}

/// Moves what is ready between the proxy, the pipe and the node tasks.
fn pump(handle: &ProxyHandle, shared: &Rc<Shared>, lane: Lane) {
    loop {
        let now = shared.epoch.now();
        let mut moved = false;
        while let Some(out) = handle.poll_upstream_transmit(lane) {
            shared.cluster.borrow_mut().handle_proxy_input(&out, now);
            moved = true;
        }
        if handle.upstream_wants_input(lane) {
            let replies = shared.cluster.borrow_mut().poll_proxy_transmit();
            if let Some(replies) = replies {
                handle.handle_upstream_input(lane, &replies);
                moved = true;
            }
        }
        let events: Vec<ClusterEvent> =
            std::iter::from_fn(|| shared.cluster.borrow_mut().poll_event()).collect();
        for event in events {
            match event {
                ClusterEvent::Connect(id, addr) => spawn_node(shared, id, addr),
                ClusterEvent::Close(id) => {
                    if let Some((task, _)) = shared.nodes.borrow_mut().remove(&id) {
                        task.abort();
                    }
                }
            }
        }
        for (id, (_, writer)) in shared.nodes.borrow().iter() {
            if shared.cluster.borrow().node_has_output(*id) {
                writer.notify_one();
            }
        }
        if lane == Lane::Main {
            let facts = shared.cluster.borrow().facts();
            if shared.facts.borrow().as_ref() != Some(&facts) {
                handle.set_cluster_facts(facts.clone());
                *shared.facts.borrow_mut() = Some(facts);
            }
        }
        if !moved {
            return;
        }
    }
}

fn spawn_node(shared: &Rc<Shared>, id: NodeId, addr: String) {
    let writer = Rc::new(Notify::new());
    let task = tokio::task::spawn_local(node(shared.clone(), id, addr, writer.clone()));
    if let Some((old, _)) = shared.nodes.borrow_mut().insert(id, (task, writer)) {
        old.abort();
    }
}

/// One node's connection: made once; the pipe asks for another if it
/// still needs the node after this one ends.
async fn node(shared: Rc<Shared>, id: NodeId, addr: String, writer: Rc<Notify>) {
    let connected = tokio::time::timeout(shared.connect_timeout, TcpStream::connect(&addr)).await;
    let mut stream = match connected {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return lost(&shared, id, &addr, &e.to_string(), false),
        Err(_) => return lost(&shared, id, &addr, "connection timed out", false),
    };
    if let Err(e) = stream.set_nodelay(true) {
        debug!("cannot set TCP_NODELAY to {addr}: {e}");
    }
    info!("connected to cluster node {addr}");
    shared
        .cluster
        .borrow_mut()
        .handle_node_connected(id, shared.epoch.now());
    shared.lane.notify_one();
    let (mut rd, mut wr) = stream.split();
    let reader = async {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            buf.reserve(READ_CHUNK);
            match rd.read_buf(&mut buf).await {
                Ok(0) => return "closed by the node".to_owned(),
                Ok(_) => {
                    shared
                        .cluster
                        .borrow_mut()
                        .handle_node_input(id, &buf, shared.epoch.now());
                    buf.clear();
                    shared.lane.notify_one();
                }
                Err(e) => return e.to_string(),
            }
        }
    };
    let writes = async {
        loop {
            let out = shared.cluster.borrow_mut().poll_node_transmit(id);
            match out {
                Some(out) => {
                    if let Err(e) = wr.write_all(&out).await {
                        return e.to_string();
                    }
                }
                None => writer.notified().await,
            }
        }
    };
    let reason = tokio::select! {
        r = reader => r,
        r = writes => r,
    };
    lost(&shared, id, &addr, &reason, true);
}

fn lost(shared: &Shared, id: NodeId, addr: &str, reason: &str, was_up: bool) {
    if was_up {
        warn!("lost cluster node {addr}: {reason}");
    } else {
        debug!("cannot connect to cluster node {addr}: {reason}");
    }
    shared
        .cluster
        .borrow_mut()
        .handle_node_lost(id, reason, shared.epoch.now());
    shared.lane.notify_one();
}
