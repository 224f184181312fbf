// ioredis, at its default settings, against a Redis-compatible server.
//
// Usage: node ioredis.mjs HOST PORT [--no-transactions]
//
// Run by tests/tests/client_libs.rs with the packages that `cargo xtask
// setup` installs into tests/clients/node_modules. Every check compares
// exact values; the first mismatch prints `FAIL [ioredis] <check>: ...` on
// stderr and exits with status 1. `--no-transactions` leaves out
// WATCH/MULTI/EXEC, for runs through `kv proxy`, which does not relay them.

import { readFileSync } from "node:fs";
import Redis from "ioredis";
import { Checks } from "./checks.mjs";

const c = new Checks("ioredis");
const { version } = JSON.parse(
  readFileSync(new URL("./node_modules/ioredis/package.json", import.meta.url)),
);
console.log(`ioredis ${version}, default options (protocol 3)`);

/**
 * A client that connects at once (ioredis's default), resolved once it is
 * ready: after its handshake (HELLO 3) and its ready check (INFO).
 */
function connect(options) {
  const client = new Redis(options);
  client.on("error", (err) => c.clientError(err));
  return new Promise((resolve) => client.once("ready", () => resolve(client)));
}

// Only where to connect: everything else, the protocol included, stays at
// the library's defaults.
const client = await c.call("connect", () => connect({ host: c.host, port: c.port }));

const k = c.key("k");
const n = c.key("n");
const missing = c.key("missing");
await c.check("SET k v EX 10", () => client.set(k, "v", "EX", 10), "OK");
await c.check("GET k", () => client.get(k), "v");
await c.checkInRange("TTL k after SET EX 10", () => client.ttl(k), 0, 10);

await c.check("SET k2 v2", () => client.set(c.key("k2"), "v2"), "OK");
await c.check("MGET k missing k2", () => client.mget(k, missing, c.key("k2")), ["v", null, "v2"]);

await c.check("INCR n (new key)", () => client.incr(n), 1);
await c.check("INCR n again", () => client.incr(n), 2);
await c.check("GET n", () => client.get(n), "2");

await c.check("EXPIRE k 100", () => client.expire(k, 100), 1);
await c.checkInRange("TTL k after EXPIRE 100", () => client.ttl(k), 0, 100);
await c.check("PEXPIRE k 100000", () => client.pexpire(k, 100000), 1);
await c.checkInRange("PTTL k after PEXPIRE 100000", () => client.pttl(k), 0, 100000);

// A pipeline's exec resolves to one [error, reply] pair per command.
const pk = c.key("pipe");
await c.check(
  "pipeline SET, INCR, GET, MGET, DEL, GET",
  () => client.pipeline().set(pk, "1").incr(pk).get(pk).mget(pk, missing).del(pk).get(pk).exec(),
  [[null, "OK"], [null, 2], [null, "2"], [null, ["2", null]], [null, 1], [null, null]],
);

if (c.transactions) {
  const w = c.key("watched");
  await c.check("SET watched start", () => client.set(w, "start"), "OK");
  await c.check("WATCH watched", () => client.watch(w), "OK");
  await c.check("GET watched after WATCH", () => client.get(w), "start");
  await c.check(
    "MULTI SET INCR EXEC, key untouched",
    () => client.multi().set(w, "committed").incr(n).exec(),
    [[null, "OK"], [null, 3]],
  );
  await c.check("GET watched after EXEC", () => client.get(w), "committed");

  // A second connection changes the key between WATCH and EXEC: the server
  // must abort the transaction, which ioredis reports as a null result.
  const other = await c.call("connect another connection", () =>
    connect({ host: c.host, port: c.port }),
  );
  await c.check("WATCH watched", () => client.watch(w), "OK");
  await c.check("SET watched theirs, by another connection", () => other.set(w, "theirs"), "OK");
  await c.check(
    "MULTI SET EXEC after another connection changed the WATCHed key",
    () => client.multi().set(w, "mine").exec(),
    null,
  );
  await c.check("GET watched after the aborted EXEC", () => client.get(w), "theirs");
  other.disconnect();
} else {
  console.log("skip: WATCH/MULTI/EXEC (--no-transactions)");
}

client.disconnect();
c.done();
