// What the Node.js client scripts (node_redis.mjs, ioredis.mjs) share: their
// command line, exact checks that stop at the first mismatch, and a watchdog.
//
// Both libraries reconnect and queue commands forever by default, so a
// server that refuses their handshake would leave a script waiting rather
// than failing; the watchdog turns that into a failure that names the step.

import { isDeepStrictEqual, inspect } from "node:util";

/** How long a whole run may take; far more than a passing run needs. */
const WATCHDOG_MS = 20_000;

export class Checks {
  /**
   * Parses `node SCRIPT HOST PORT [--no-transactions]` (exiting with status
   * 2 and a usage line on a bad command line) and starts the watchdog.
   */
  constructor(lib) {
    this.lib = lib;
    this.step = "start";
    const args = process.argv.slice(2);
    this.transactions = !args.includes("--no-transactions");
    const rest = args.filter((a) => a !== "--no-transactions");
    const port = Number(rest[1]);
    if (rest.length !== 2 || !Number.isInteger(port)) {
      console.error(`usage: node ${process.argv[1]} HOST PORT [--no-transactions]`);
      process.exit(2);
    }
    this.host = rest[0];
    this.port = port;
    // A prefix of its own per run, so that runs against one server (and
    // keys left behind by a failed run) never meet.
    this.prefix = `kvclients:${lib}:${process.pid}:${Date.now()}:`;
    this.lastError = undefined;
    this.watchdog = setTimeout(
      () => this.fail(`${this.step}: no reply within ${WATCHDOG_MS} ms`),
      WATCHDOG_MS,
    );
  }

  /** A key with this run's prefix. */
  key(name) {
    return this.prefix + name;
  }

  /**
   * Remembers an error the client emitted, for the failure message, and
   * prints it unless it repeats the one before (a client that reconnects
   * emits the same error on every try).
   */
  clientError(err) {
    if (String(err) !== String(this.lastError)) {
      console.error(`[${this.lib}] client error event during ${this.step}: ${err}`);
    }
    this.lastError = err;
  }

  /** Prints the failure and exits with status 1. */
  fail(message) {
    const last = this.lastError ? ` (last client error: ${this.lastError})` : "";
    console.error(`FAIL [${this.lib}] ${message}${last}`);
    process.exit(1);
  }

  /** Awaits `thunk()`, failing with the step's name if it rejects. */
  async call(what, thunk) {
    this.step = what;
    try {
      return await thunk();
    } catch (err) {
      this.fail(`${what}: ${err?.name ?? "error"}: ${err?.message ?? err}`);
    }
  }

  /** Checks that `thunk()` resolves to exactly `expected`. */
  async check(what, thunk, expected) {
    const got = await this.call(what, thunk);
    if (!isDeepStrictEqual(got, expected)) {
      this.fail(`${what}: expected ${inspect(expected)}, got ${inspect(got)}`);
    }
    console.log(`ok: ${what} == ${inspect(expected)}`);
    return got;
  }

  /** Checks that `thunk()` resolves to an integer in (low, high]. */
  async checkInRange(what, thunk, low, high) {
    const got = await this.call(what, thunk);
    if (!Number.isInteger(got) || !(low < got && got <= high)) {
      this.fail(`${what}: expected an integer in (${low}, ${high}], got ${inspect(got)}`);
    }
    console.log(`ok: ${what} = ${got} in (${low}, ${high}]`);
  }

  /**
   * Checks that `thunk()` rejects with an instance of `errorClass`. (By
   * class, not by `err.name`: node-redis's WatchError keeps the name
   * "Error".)
   */
  async checkRejects(what, thunk, errorClass) {
    this.step = what;
    let got;
    try {
      got = await thunk();
    } catch (err) {
      if (err instanceof errorClass) {
        console.log(`ok: ${what} rejected with ${errorClass.name}`);
        return;
      }
      this.fail(`${what}: expected ${errorClass.name}, got ${err?.name}: ${err?.message ?? err}`);
    }
    this.fail(`${what}: expected ${errorClass.name}, got ${inspect(got)}`);
  }

  /** Reports success and stops the watchdog. */
  done() {
    clearTimeout(this.watchdog);
    console.log(`ALL OK [${this.lib}]`);
  }
}
