// node-redis's client-side cache (RESP3 with CLIENT TRACKING) against a
// Redis-compatible server or proxy.
//
// Usage: node node_redis_cache.mjs HOST PORT
//
// Run by tests/tests/client_libs.rs. A client with `clientSideCache` reads a
// key twice: the second read must come from node-redis's own cache, which
// the node it is connected to shows by not counting a second GET in INFO
// commandstats (and the cache's own hit count). Another connection then
// writes the key: the invalidation the node pushes must make the cached
// client read the new value, within a deadline (the push travels on its
// own). The first mismatch prints `FAIL [node-redis cache] ...` and exits 1.

import { createClient } from "redis";
import { Checks } from "./checks.mjs";

const c = new Checks("node-redis cache");
const socket = { host: c.host, port: c.port };
const admin = createClient({ socket });
const cached = createClient({ socket, RESP: 3, clientSideCache: { ttl: 0, maxEntries: 0 } });
admin.on("error", (err) => c.clientError(err));
cached.on("error", (err) => c.clientError(err));
await c.call("connect", () => Promise.all([admin.connect(), cached.connect()]));

async function getCalls() {
  const info = await admin.info("commandstats");
  const m = /cmdstat_get:calls=(\d+)/.exec(info);
  return m ? Number(m[1]) : 0;
}

const k = c.key("k");
await c.check("SET k v1", () => admin.set(k, "v1"), "OK");
await c.check("first GET k", () => cached.get(k), "v1");
const before = await c.call("INFO commandstats", getCalls);
await c.check("second GET k", () => cached.get(k), "v1");
const after = await c.call("INFO commandstats", getCalls);
if (after !== before) {
  c.fail(`the second GET reached the node (${before} GETs before, ${after} after)`);
}
const hits = cached.clientSideCache.stats().hitCount;
if (hits < 1) c.fail(`node-redis counted no cache hit (${hits})`);
console.log("ok: the second GET was answered from node-redis's cache");

await c.check("SET k v2 from another connection", () => admin.set(k, "v2"), "OK");
const deadline = Date.now() + 5000;
for (;;) {
  const got = await c.call("GET k after the write", () => cached.get(k));
  if (got === "v2") break;
  if (got !== "v1") c.fail(`GET after the write: expected v1 or v2, got ${got}`);
  if (Date.now() > deadline) c.fail("GET still returns the old value 5 s after the write");
  await new Promise((r) => setTimeout(r, 1));
}
console.log("ok: after a write from another connection, GET returns the new value");
await c.call("DEL k", () => admin.del(k));
await c.call("quit", () => Promise.all([admin.quit(), cached.quit()]));
c.done();
