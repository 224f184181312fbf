// node-redis (the npm package `redis`), at its default settings, against a
// Redis-compatible server.
//
// Usage: node node_redis.mjs HOST PORT [--no-transactions]
//
// Run by tests/tests/client_libs.rs with the packages that `cargo xtask
// setup` installs into tests/clients/node_modules. Every check compares
// exact values; the first mismatch prints `FAIL [node-redis] <check>: ...`
// on stderr and exits with status 1. `--no-transactions` leaves out
// WATCH/MULTI/EXEC, for runs through `kv proxy`, which does not relay them.

import { readFileSync } from "node:fs";
import { createClient, WatchError } from "redis";
import { Checks } from "./checks.mjs";

const c = new Checks("node-redis");
const { version } = JSON.parse(
  readFileSync(new URL("./node_modules/redis/package.json", import.meta.url)),
);
console.log(`node-redis ${version}, default options (RESP3)`);

// Only where to connect: everything else, the protocol included, stays at
// the library's defaults.
const client = createClient({ socket: { host: c.host, port: c.port } });
client.on("error", (err) => c.clientError(err));
await c.call("connect", () => client.connect());

const k = c.key("k");
const n = c.key("n");
const missing = c.key("missing");
await c.check(
  "SET k v EX 10",
  () => client.set(k, "v", { expiration: { type: "EX", value: 10 } }),
  "OK",
);
await c.check("GET k", () => client.get(k), "v");
await c.checkInRange("TTL k after SET EX 10", () => client.ttl(k), 0, 10);

await c.check("SET k2 v2", () => client.set(c.key("k2"), "v2"), "OK");
await c.check("MGET k missing k2", () => client.mGet([k, missing, c.key("k2")]), ["v", null, "v2"]);

await c.check("INCR n (new key)", () => client.incr(n), 1);
await c.check("INCR n again", () => client.incr(n), 2);
await c.check("GET n", () => client.get(n), "2");

await c.check("EXPIRE k 100", () => client.expire(k, 100), 1);
await c.checkInRange("TTL k after EXPIRE 100", () => client.ttl(k), 0, 100);
await c.check("PEXPIRE k 100000", () => client.pExpire(k, 100000), 1);
await c.checkInRange("PTTL k after PEXPIRE 100000", () => client.pTTL(k), 0, 100000);

// execAsPipeline: the queued commands go out together, without MULTI/EXEC.
const pk = c.key("pipe");
await c.check(
  "pipeline SET, INCR, GET, MGET, DEL, GET",
  () =>
    client
      .multi()
      .set(pk, "1")
      .incr(pk)
      .get(pk)
      .mGet([pk, missing])
      .del(pk)
      .get(pk)
      .execAsPipeline(),
  ["OK", 2, "2", ["2", null], 1, null],
);

if (c.transactions) {
  const w = c.key("watched");
  await c.check("SET watched start", () => client.set(w, "start"), "OK");
  await c.check("WATCH watched", () => client.watch(w), "OK");
  await c.check("GET watched after WATCH", () => client.get(w), "start");
  await c.check(
    "MULTI SET INCR EXEC, key untouched",
    () => client.multi().set(w, "committed").incr(n).exec(),
    ["OK", 3],
  );
  await c.check("GET watched after EXEC", () => client.get(w), "committed");

  // A second connection changes the key between WATCH and EXEC: the server
  // must abort the transaction, which node-redis reports as a WatchError.
  const other = client.duplicate();
  other.on("error", (err) => c.clientError(err));
  await c.call("connect another connection", () => other.connect());
  await c.check("WATCH watched", () => client.watch(w), "OK");
  await c.check("SET watched theirs, by another connection", () => other.set(w, "theirs"), "OK");
  await c.checkRejects(
    "MULTI SET EXEC after another connection changed the WATCHed key",
    () => client.multi().set(w, "mine").exec(),
    WatchError,
  );
  await c.check("GET watched after the aborted EXEC", () => client.get(w), "theirs");
  await c.call("close another connection", () => other.close());
} else {
  console.log("skip: WATCH/MULTI/EXEC (--no-transactions)");
}

await c.call("close", () => client.close());
c.done();
