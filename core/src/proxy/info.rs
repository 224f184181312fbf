//! The proxy as a [`Node`]: what its `INFO`, `CONFIG GET`, `HELLO` and
//! `AUTH` answer. A view of the proxy's parts other than its clients, so a
//! client's session can be changed while the node is read.

use super::tracking::Tracking;
use super::{ProxyConfig, ProxyStats, UpstreamServer, UpstreamState, UpstreamTracking};
use crate::auth::Password;
use crate::cache::TtlCache;
use crate::errors::ProxyTrackingError;
use crate::reply::{Proto, Reply};
use crate::session::{
    replication_and_cpu, server_section, HostFacts, InfoSections, KillFilter, Node, Role, Session,
    TrackingOptions, TrackingRequest,
};
use crate::stats::CommandStats;
use bytes::Bytes;

/// What the proxy says to the client commands it does not carry out: its
/// clients are its drivers', and it keeps no list of them yet.
const NOT_AT_PROXY: &str =
    "ERR CLIENT {} is not available through the kv proxy (connect to the server for its clients)";

pub(super) struct View<'a> {
    pub config: &'a ProxyConfig,
    pub cache: &'a TtlCache,
    pub stats: &'a ProxyStats,
    pub upstream: UpstreamState,
    pub upstream_server: &'a UpstreamServer,
    pub upstream_in_flight: usize,
    pub clients: usize,
    pub host: &'a HostFacts,
    pub commands: &'a CommandStats,
    pub tracking: &'a mut Tracking,
    pub tracking_refused: Option<&'a str>,
    /// Per lane, in [`Lane::ALL`](super::Lane::ALL) order.
    pub lane_tracking: [&'a UpstreamTracking; 2],
    /// The main lane's cluster pipe, in front of a cluster.
    pub cluster: Option<&'a crate::cluster::ClusterFacts>,
}

impl View<'_> {
    /// `CLIENT TRACKING ON` for the client of `session`: turned on only
    /// where the proxy can deliver the invalidations, never an `OK` for
    /// tracking that is not done.
    fn tracking_on(
        &mut self,
        session: &mut Session,
        opts: &TrackingOptions,
    ) -> Result<(), ProxyTrackingError> {
        let unsupported = [
            (opts.redirect.is_some(), "REDIRECT"),
            (opts.bcast, "BCAST"),
            (!opts.prefixes.is_empty(), "PREFIX"),
            (opts.optin, "OPTIN"),
            (opts.optout, "OPTOUT"),
            (opts.noloop, "NOLOOP"),
        ];
        if let Some((_, option)) = unsupported.into_iter().find(|(given, _)| *given) {
            return Err(ProxyTrackingError::Unsupported(option));
        }
        if !self.config.tracking {
            return Err(ProxyTrackingError::Off);
        }
        if let Some(why) = self.tracking_refused {
            return Err(ProxyTrackingError::UpstreamRefused(why.to_owned()));
        }
        if session.proto != Proto::Resp3 {
            return Err(ProxyTrackingError::NeedsResp3);
        }
        self.tracking.set(super::clients::id_of(session), true);
        session.tracking = true;
        Ok(())
    }

    /// `INFO`'s `# Tracking` section.
    fn tracking_section(&self, info: &mut String) {
        use std::fmt::Write;
        let s = self.stats;
        let state = if !self.config.tracking {
            "off"
        } else if self.tracking_refused.is_some() {
            "fallback"
        } else {
            "on"
        };
        let _ = write!(
            info,
            "# Tracking\ntracking:{state}\ntracking_fallback_reason:{}\ntracking_invalidations_received:{}\ntracking_keys_invalidated:{}\ntracking_flushes:{}\ntracking_clients:{}\ntracking_client_keys:{}\n",
            // One line, whatever the server said.
            self.tracking_refused.unwrap_or("").replace(['\r', '\n'], " "),
            s.tracking_invalidations_received,
            s.tracking_keys_invalidated,
            s.tracking_flushes,
            self.tracking.clients(),
            self.tracking.pairs(),
        );
        for (lane, state) in super::Lane::ALL.iter().zip(self.lane_tracking) {
            let _ = writeln!(info, "upstream_{}_tracking:{}", lane.name(), state.name());
        }
    }
}

impl Node for View<'_> {
    fn role(&self) -> Role {
        Role::Proxy
    }

    fn info(&self, sections: &InfoSections) -> String {
        let c = self.cache.stats();
        let s = self.stats;
        use std::fmt::Write;
        let h = self.host;
        let mut info = String::new();
        if sections.wants("server") {
            server_section(&mut info, Role::Proxy, h);
        }
        if sections.wants("clients") {
            let _ = write!(info, "# Clients\nconnected_clients:{}\n", self.clients);
        }
        if sections.wants("memory") {
            let _ = write!(
                info,
                "# Memory\nused_memory:{rss}\nused_memory_rss:{rss}\nmaxmemory:0\n",
                rss = h.rss_bytes
            );
        }
        replication_and_cpu(&mut info, sections, h);
        if sections.wants("tracking") {
            self.tracking_section(&mut info);
        }
        if sections.wants_extra("commandstats") {
            self.commands.info(&mut info);
        }
        if !(sections.wants("proxy") || sections.wants("stats")) {
            return info;
        }
        if let Some(f) = self.cluster {
            let s = &f.stats;
            let _ = write!(
                info,
                "# Upstream cluster\nupstream_cluster_masters:{}\nupstream_cluster_slots_served:{}\nupstream_cluster_nodes_up:{}\nupstream_cluster_map_error:{}\nupstream_cluster_map_reads:{}\nupstream_cluster_moved:{}\nupstream_cluster_asked:{}\nupstream_cluster_retries:{}\nupstream_cluster_split:{}\nupstream_cluster_crossslot:{}\nupstream_cluster_nodes_lost:{}\n",
                f.masters,
                f.slots_served,
                f.nodes_up,
                f.map_error.as_deref().unwrap_or(""),
                s.map_reads,
                s.moved,
                s.asked,
                s.retries,
                s.split,
                s.crossslot,
                s.nodes_lost,
            );
        }
        info + &format!(
            "# Proxy\nrole:proxy\nupstream:{}\nupstream_server:{}\nupstream_server_version:{}\nupstream_in_flight:{}\nclients:{}\ndedicated_connections:{}\ndedicated_connections_max:{}\ndedicated_connections_opened:{}\ndedicated_connections_refused:{}\ndedicated_connections_released:{}\n# Cache\ncache_ttl_ms:{}\ncache_entries:{}\ncache_bytes:{}\ncache_hits:{}\ncache_misses:{}\ncache_expirations:{}\ncache_evictions:{}\ncache_invalidations:{}\n# Stats\nrequests:{}\nupstream_requests:{}\ncoalesced:{}\nupstream_timeouts:{}\nupstream_resets:{}\nupstream_connections:{}\nerrors:{}\nconnections_total:{}\nconnections_rejected:{}\nconnections_timed_out:{}\nclient_output_buffer_limit_disconnections:{}\n",
            self.upstream.name(),
            // One line each, whatever the server said.
            self.upstream_server.name().replace(['\r', '\n'], " "),
            self.upstream_server.version().replace(['\r', '\n'], " "),
            self.upstream_in_flight,
            self.clients,
            s.dedicated,
            self.config.max_dedicated,
            s.dedicated_opened,
            s.dedicated_refused,
            s.dedicated_released,
            self.cache.config().ttl.as_millis(),
            self.cache.len(),
            self.cache.bytes(),
            c.hits,
            c.misses,
            c.expirations,
            c.evictions,
            c.invalidations,
            s.requests,
            s.upstream_requests,
            s.coalesced,
            s.upstream_timeouts,
            s.upstream_resets,
            s.upstream_connections,
            s.errors,
            s.connections_total,
            s.connections_rejected,
            s.connections_timed_out,
            s.output_limit_disconnections,
        )
    }

    fn client_info(&self, current: &Session) -> String {
        let resp = if current.proto == crate::reply::Proto::Resp3 {
            3
        } else {
            2
        };
        let name = current
            .names()
            .and_then(|n| n.name.as_ref())
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_default();
        format!("id={} name={name} db=0 resp={resp}\n", current.id)
    }

    fn client_list(&self, _: &Session) -> Result<String, String> {
        Err(NOT_AT_PROXY.replace("{}", "LIST"))
    }

    fn client_kill(&mut self, _: &KillFilter, _: &Session) -> Result<usize, String> {
        Err(NOT_AT_PROXY.replace("{}", "KILL"))
    }

    fn password(&self) -> Option<&Password> {
        self.config.password.as_ref()
    }

    /// The proxy tracks for its clients in RESP3, with none of the
    /// options: see `tracking.rs`.
    fn tracking(&mut self, session: &mut Session, request: TrackingRequest) -> Reply {
        let on = self.tracking.is_on(super::clients::id_of(session));
        let text = |s: &'static str| Reply::Bulk(Bytes::from_static(s.as_bytes()));
        // Tracking at the proxy never redirects: 0 is "to itself".
        let redirect = Reply::Integer(if on { 0 } else { -1 });
        match request {
            TrackingRequest::On(opts) => match self.tracking_on(session, &opts) {
                Ok(()) => Reply::ok(),
                Err(e) => e.into(),
            },
            TrackingRequest::Off => {
                self.tracking.set(super::clients::id_of(session), false);
                session.tracking = false;
                Reply::ok()
            }
            // Without OPTIN or OPTOUT, Redis's answer.
            TrackingRequest::Caching(_) => Reply::error("ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled"),
            TrackingRequest::GetRedir => redirect,
            TrackingRequest::Info => Reply::Map(vec![
                (
                    text("flags"),
                    Reply::Set(vec![text(if on { "on" } else { "off" })]),
                ),
                (text("redirect"), redirect),
                (text("prefixes"), Reply::Array(Vec::new())),
            ]),
        }
    }

    fn config(&self) -> Vec<(&'static str, String)> {
        // The proxy keeps no data of its own to save or log.
        vec![("save", String::new()), ("appendonly", "no".to_string())]
    }
}
