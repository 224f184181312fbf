//! The proxy as a [`Node`]: what its `INFO`, `CONFIG GET`, `HELLO` and
//! `AUTH` answer. A view of the proxy's parts other than its clients, so a
//! client's session can be changed while the node is read.

use super::{ProxyConfig, ProxyStats, UpstreamState};
use crate::auth::Password;
use crate::cache::TtlCache;
use crate::session::{server_section, InfoSections, Node, Role};

pub(super) struct View<'a> {
    pub config: &'a ProxyConfig,
    pub cache: &'a TtlCache,
    pub stats: &'a ProxyStats,
    pub upstream: UpstreamState,
    pub upstream_in_flight: usize,
    pub clients: usize,
}

impl Node for View<'_> {
    fn role(&self) -> Role {
        Role::Proxy
    }

    fn info(&self, sections: &InfoSections) -> String {
        let c = self.cache.stats();
        let s = self.stats;
        let mut info = String::new();
        if sections.wants("server") {
            server_section(&mut info, Role::Proxy, 0, 0);
        }
        info + &format!(
            "# Proxy\nrole:proxy\nupstream:{}\nupstream_in_flight:{}\nclients:{}\n# Cache\ncache_ttl_ms:{}\ncache_entries:{}\ncache_bytes:{}\ncache_hits:{}\ncache_misses:{}\ncache_expirations:{}\ncache_evictions:{}\n# Stats\nrequests:{}\nupstream_requests:{}\ncoalesced:{}\nupstream_timeouts:{}\nupstream_resets:{}\nerrors:{}\nconnections_total:{}\nconnections_rejected:{}\nconnections_timed_out:{}\n",
            match self.upstream {
                UpstreamState::Up => "up",
                UpstreamState::Connecting => "connecting",
                UpstreamState::Down => "down",
            },
            self.upstream_in_flight,
            self.clients,
            self.cache.config().ttl.as_millis(),
            self.cache.len(),
            self.cache.bytes(),
            c.hits,
            c.misses,
            c.expirations,
            c.evictions,
            s.requests,
            s.upstream_requests,
            s.coalesced,
            s.upstream_timeouts,
            s.upstream_resets,
            s.errors,
            s.connections_total,
            s.connections_rejected,
            s.connections_timed_out,
        )
    }

    fn password(&self) -> Option<&Password> {
        self.config.password.as_ref()
    }

    fn config(&self) -> Vec<(&'static str, String)> {
        // The proxy keeps no data of its own to save or log.
        vec![("save", String::new()), ("appendonly", "no".to_string())]
    }
}
