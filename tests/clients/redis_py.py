"""redis-py, at its default settings, against a Redis-compatible server.

Usage: python redis_py.py HOST PORT [--no-transactions]

Run by tests/tests/client_libs.rs with the virtual environment that
`cargo xtask setup` makes in tests/clients/.venv. Every check compares exact
values; the first mismatch prints `FAIL [redis-py] <check>: ...` on stderr
and exits with status 1. `--no-transactions` leaves out WATCH/MULTI/EXEC,
for runs through `kv proxy`, which does not relay them.
"""

import os
import sys
import time

LIB = "redis-py"

try:
    import redis
except ImportError as e:
    print(f"FAIL [{LIB}] import redis: {e}: run `cargo xtask setup`", file=sys.stderr)
    sys.exit(1)


class Mismatch(Exception):
    pass


def call(what, thunk):
    """Runs one command (or batch), naming it in the error if it fails."""
    try:
        return thunk()
    except redis.RedisError as e:
        raise Mismatch(f"{what}: {type(e).__name__}: {e}") from e


def check(what, thunk, expected):
    got = call(what, thunk)
    if got != expected:
        raise Mismatch(f"{what}: expected {expected!r}, got {got!r}")
    print(f"ok: {what} == {expected!r}")


def check_in_range(what, thunk, low_exclusive, high_inclusive):
    got = call(what, thunk)
    # bool is an int in Python; a True here would be a wrong reply type.
    if type(got) is not int or not low_exclusive < got <= high_inclusive:
        raise Mismatch(
            f"{what}: expected an int in ({low_exclusive}, {high_inclusive}], got {got!r}"
        )
    print(f"ok: {what} = {got} in ({low_exclusive}, {high_inclusive}]")


def run(host, port, transactions):
    # A prefix of its own per run, so that runs against one server (and keys
    # left behind by a failed run) never meet.
    p = f"kvclients:py:{os.getpid()}:{time.time_ns()}:"
    r = redis.Redis(host=host, port=port)
    # redis-py connects lazily; connecting here names the handshake (HELLO
    # and CLIENT SETINFO at the defaults) as the step that failed, if any.
    conn = call("connect", r.connection_pool.get_connection)
    print(f"{LIB} {redis.__version__}, protocol {conn.protocol} (the default)")
    r.connection_pool.release(conn)

    k = p + "k"
    check("SET k v EX 10", lambda: r.set(k, "v", ex=10), True)
    check("GET k", lambda: r.get(k), b"v")
    check_in_range("TTL k after SET EX 10", lambda: r.ttl(k), 0, 10)

    check("SET k2 v2", lambda: r.set(p + "k2", "v2"), True)
    check(
        "MGET k missing k2",
        lambda: r.mget(k, p + "missing", p + "k2"),
        [b"v", None, b"v2"],
    )

    n = p + "n"
    check("INCR n (new key)", lambda: r.incr(n), 1)
    check("INCR n again", lambda: r.incr(n), 2)
    check("GET n", lambda: r.get(n), b"2")

    check("EXPIRE k 100", lambda: r.expire(k, 100), True)
    check_in_range("TTL k after EXPIRE 100", lambda: r.ttl(k), 0, 100)
    check("PEXPIRE k 100000", lambda: r.pexpire(k, 100000), True)
    check_in_range("PTTL k after PEXPIRE 100000", lambda: r.pttl(k), 0, 100000)

    # transaction=False: a plain pipeline, which the proxy relays too (the
    # default, True, wraps it in MULTI/EXEC).
    pipe = r.pipeline(transaction=False)
    pipe.set(p + "pipe", "1")
    pipe.incr(p + "pipe")
    pipe.get(p + "pipe")
    pipe.mget(p + "pipe", p + "missing")
    pipe.delete(p + "pipe")
    pipe.get(p + "pipe")
    check(
        "pipeline SET, INCR, GET, MGET, DEL, GET",
        pipe.execute,
        [True, 2, b"2", [b"2", None], 1, None],
    )

    if not transactions:
        print("skip: WATCH/MULTI/EXEC (--no-transactions)")
        return

    w = p + "watched"
    check("SET watched start", lambda: r.set(w, "start"), True)
    with r.pipeline() as tx:
        call("WATCH watched", lambda: tx.watch(w))
        # After WATCH the pipeline runs commands at once, on its connection.
        check("GET watched after WATCH", lambda: tx.get(w), b"start")
        tx.multi()
        tx.set(w, "committed")
        tx.incr(n)
        check("MULTI SET INCR EXEC, key untouched", tx.execute, [True, 3])
    check("GET watched after EXEC", lambda: r.get(w), b"committed")

    # Another client, so surely another connection, changes the key between
    # WATCH and EXEC: the server must abort the transaction.
    other = redis.Redis(host=host, port=port)
    with r.pipeline() as tx:
        call("WATCH watched", lambda: tx.watch(w))
        check(
            "SET watched theirs, by another connection",
            lambda: other.set(w, "theirs"),
            True,
        )
        tx.multi()
        tx.set(w, "mine")
        what = "MULTI SET EXEC after another connection changed the WATCHed key"
        try:
            replies = tx.execute()
        except redis.WatchError:
            print(f"ok: {what} raised WatchError")
        except redis.RedisError as e:
            raise Mismatch(f"{what}: expected WatchError, got {type(e).__name__}: {e}")
        else:
            raise Mismatch(f"{what}: expected WatchError, got {replies!r}")
    check("GET watched after the aborted EXEC", lambda: r.get(w), b"theirs")
    other.close()
    r.close()


def main():
    args = sys.argv[1:]
    transactions = "--no-transactions" not in args
    args = [a for a in args if a != "--no-transactions"]
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    host, port = args[0], int(args[1])
    try:
        run(host, port, transactions)
    except Mismatch as e:
        print(f"FAIL [{LIB}] {e}", file=sys.stderr)
        sys.exit(1)
    print(f"ALL OK [{LIB}]")


if __name__ == "__main__":
    main()
