"""redis-py's client-side cache (RESP3 with CLIENT TRACKING) against a
Redis-compatible server or proxy.

Usage: python redis_py_cache.py HOST PORT

Run by tests/tests/client_libs.rs. A client with `cache_config` reads a key
twice: the second read must come from redis-py's own cache, which the node
it is connected to shows by not counting a second GET in INFO
commandstats. Another connection then writes the key: the invalidation the
node pushes must make the cached client read the new value (within a
deadline: the push travels on its own). The first mismatch prints
`FAIL [redis-py cache] <check>: ...` on stderr and exits with status 1.
"""

import os
import sys
import time

LIB = "redis-py cache"

try:
    import redis
    from redis.cache import CacheConfig
except ImportError as e:
    print(f"FAIL [{LIB}] import: {e}: run `cargo xtask setup`", file=sys.stderr)
    sys.exit(1)


class Mismatch(Exception):
    pass


def get_calls(admin):
    """GETs the node has run, as INFO commandstats counts them."""
    stats = admin.info("commandstats")
    return stats.get("cmdstat_get", {}).get("calls", 0)


def run(host, port):
    key = f"kvclients:pycache:{os.getpid()}:{time.time_ns()}"
    admin = redis.Redis(host=host, port=port)
    cached = redis.Redis(host=host, port=port, protocol=3, cache_config=CacheConfig())
    admin.set(key, "v1")
    first = cached.get(key)
    if first != b"v1":
        raise Mismatch(f"first GET: expected b'v1', got {first!r}")
    before = get_calls(admin)
    second = cached.get(key)
    if second != b"v1":
        raise Mismatch(f"second GET: expected b'v1', got {second!r}")
    after = get_calls(admin)
    if after != before:
        raise Mismatch(f"second GET reached the node ({before} GETs before, {after} after)")
    print("ok: the second GET was answered from redis-py's cache")
    admin.set(key, "v2")
    deadline = time.monotonic() + 5
    while True:
        got = cached.get(key)
        if got == b"v2":
            break
        if got != b"v1":
            raise Mismatch(f"GET after the write: expected b'v1' or b'v2', got {got!r}")
        if time.monotonic() > deadline:
            raise Mismatch("GET still returns the old value 5 s after the write: no invalidation")
        time.sleep(0.001)
    print("ok: after a write from another connection, GET returns the new value")
    admin.delete(key)


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    try:
        run(host, port)
    except (Mismatch, redis.RedisError) as e:
        print(f"FAIL [{LIB}] {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
