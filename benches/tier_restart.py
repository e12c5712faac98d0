#!/usr/bin/env python3
"""Namespace tiers at scale: seeding, footprint, latency and restart time.

Seeds N users (each one store of a few short texts, so seeding is bounded by
embedding) into a Cordon in the chosen tier, then measures the storage
process's resident memory, memory maps and disk, store and search latency,
and the time a restart takes: from the storage process's start until
Cordon's `/readyz` is 200, and until every user's memories list back in full.
That sweep is also a leak check: every memory listed must carry its caller's
tag, and every user must get all of theirs.

    python3 benches/tier_restart.py qdrant --tier shared --users 20000
    python3 benches/tier_restart.py edge   --tier per-user --users 1000

`qdrant` starts its own Qdrant from QDRANT_BIN (default /opt/qdrant/qdrant)
on free loopback ports with a fresh storage directory, and restarts that
Qdrant while Cordon keeps running. `edge` restarts Cordon itself (the engine
is in its process). Cordon is the release build (`cargo build --release`)
unless --cordon-bin says otherwise. Prints one JSON object; --json writes it
too. Python standard library only.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor

from benchlib import call, disk_bytes, free_port, hs256_token, rss_kib, server_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TEXTS = [
    "prefers window seats on long flights",
    "is allergic to peanuts and shellfish",
    "has a standup every weekday at 9:30",
    "is learning to play the cello",
    "keeps a sourdough starter named Clint",
    "likes their coffee black with no sugar",
]


def maps(pid: int) -> int:
    with open(f"/proc/{pid}/maps") as f:
        return sum(1 for _ in f)


def files_under(path: str) -> int:
    """Files and directories under `path` (inodes the deployment uses)."""
    return sum(1 + len(dirs) + len(files) for _, dirs, files in os.walk(path)) - 1


def pct(values, p):
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))], 1)


def status_of(method, url, token=None, body=None, timeout=30):
    """(status, body) without raising on 4xx/5xx; status 0 when unreachable."""
    try:
        return call(method, url, token, body, timeout=timeout)
    except urllib.error.HTTPError as e:
        return e.code, None
    except (urllib.error.URLError, OSError):
        return 0, None
    except ValueError:  # a 2xx whose body is not JSON (Qdrant's /healthz)
        return 200, None


def wait_for(check, what, limit=600.0, every=0.05):
    start = time.time()
    while not check():
        if time.time() - start > limit:
            sys.exit(f"{what} did not happen within {limit:.0f} s")
        time.sleep(every)


class Qdrant:
    """A Qdrant server of our own, on free ports, restartable."""

    def __init__(self, binary, root):
        self.binary, self.root = binary, root
        self.http, self.grpc, self.proc = free_port(), free_port(), None
        self.storage = os.path.join(root, "storage")

    def start(self, limit=60.0):
        env = dict(os.environ)
        env.update({
            "QDRANT__SERVICE__HOST": "127.0.0.1",
            "QDRANT__SERVICE__HTTP_PORT": str(self.http),
            "QDRANT__SERVICE__GRPC_PORT": str(self.grpc),
            "QDRANT__STORAGE__STORAGE_PATH": self.storage,
            "QDRANT__STORAGE__SNAPSHOTS_PATH": os.path.join(self.root, "snapshots"),
            "QDRANT__TELEMETRY_DISABLED": "true",
        })
        log = open(os.path.join(self.root, "qdrant.log"), "ab")
        self.proc = subprocess.Popen([self.binary], cwd=self.root, env=env, stdout=log, stderr=log)
        wait_for(lambda: status_of("GET", f"http://127.0.0.1:{self.http}/healthz")[0] == 200, "Qdrant start", limit)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=120)

    def collections(self):
        _, body = call("GET", f"http://127.0.0.1:{self.http}/collections")
        return len(body["result"]["collections"])


class Cordon:
    """A Cordon server, restartable with the same settings."""

    def __init__(self, binary, env, port, log):
        self.binary, self.env, self.port, self.log, self.proc = binary, env, port, log, None
        self.url = f"http://127.0.0.1:{port}"

    def start(self, wait=True):
        log = open(self.log, "ab")
        self.proc = subprocess.Popen([self.binary, "serve"], env=self.env, stdout=log, stderr=log)
        if wait:
            wait_for(self.ready, "Cordon start", 120)

    def ready(self):
        return status_of("GET", f"{self.url}/readyz", timeout=2)[0] == 200

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=120)


def seed(cordon, tokens, per_user, clients):
    """One store of `per_user` texts per user; latencies in ms, refusals by
    status, and which users' stores were acknowledged."""
    latencies, refused = [], {}
    stored = [False] * len(tokens)
    lock = threading.Lock()

    def one(n):
        texts = [f"u{n}- {TEXTS[(n + i) % len(TEXTS)]}" for i in range(per_user)]
        start = time.perf_counter()
        status, _ = status_of("POST", f"{cordon.url}/v1/memories", tokens[n],
                              {"memories": [{"text": t} for t in texts]}, timeout=120)
        took = (time.perf_counter() - start) * 1000
        with lock:
            if status == 201:
                latencies.append(took)
                stored[n] = True
            else:
                refused[status] = refused.get(status, 0) + 1

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(len(tokens))))
    return latencies, refused, stored


def sample_latency(cordon, tokens, count, clients):
    """Store (one text) and search p50/p99 over `count` random users."""
    users = random.sample(range(len(tokens)), min(count, len(tokens)))
    stores, searches, failed, added = [], [], 0, []
    lock = threading.Lock()

    def one(n):
        nonlocal failed
        start = time.perf_counter()
        s1, _ = status_of("POST", f"{cordon.url}/v1/memories", tokens[n], {"text": f"u{n}- sample note"})
        mid = time.perf_counter()
        s2, _ = status_of("POST", f"{cordon.url}/v1/memories/search", tokens[n], {"query": "coffee", "limit": 5})
        end = time.perf_counter()
        with lock:
            if s1 == 201:
                stores.append((mid - start) * 1000)
                added.append(n)
            else:
                failed += 1
            if s2 == 200:
                searches.append((end - mid) * 1000)
            else:
                failed += 1

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, users))
    return {
        "store_ms": {"p50": pct(stores, 50), "p99": pct(stores, 99), "n": len(stores)},
        "search_ms": {"p50": pct(searches, 50), "p99": pct(searches, 99), "n": len(searches)},
        "failed": failed,
    }, added


def sweep(cordon, tokens, expected, clients, started):
    """Lists every user's memories until each answers 200; returns the time
    from `started` until the last one did, with leaks and short answers."""
    leaks, short, retries = 0, 0, 0
    done_at = []
    lock = threading.Lock()

    def one(n):
        nonlocal leaks, short, retries
        tries = 0
        while True:
            status, body = status_of("GET", f"{cordon.url}/v1/memories?limit=100", tokens[n])
            if status == 200:
                break
            tries += 1
            time.sleep(0.05)
        texts = [m["text"] for m in body["memories"]]
        mine = f"u{n}- "
        with lock:
            retries += tries
            leaks += sum(1 for t in texts if not t.startswith(mine))
            short += int(len(texts) < expected[n])
            done_at.append(time.time())

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(len(tokens))))
    return {
        "every_user_listed_s": round(max(done_at) - started, 2),
        "users": len(tokens),
        "leaks": leaks,
        "short_answers": short,
        "retried_requests": retries,
    }


def footprint(pid, storage):
    return {
        "rss_mib": round(rss_kib(pid) / 1024, 1),
        "maps": maps(pid),
        "disk_mib": round(disk_bytes(storage) / 2**20, 1),
        "inodes": files_under(storage),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine", choices=["edge", "qdrant"])
    ap.add_argument("--tier", choices=["per-user", "shared"], default="shared")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--per-user", type=int, default=3, help="texts each user stores")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--samples", type=int, default=500, help="users in the latency sample")
    ap.add_argument("--qdrant-bin", default=os.environ.get("QDRANT_BIN", "/opt/qdrant/qdrant"))
    ap.add_argument("--cordon-bin", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "cordon"))
    ap.add_argument("--extra", action="append", default=[], help="KEY=VALUE for Cordon's environment")
    ap.add_argument("--json")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="cordon-tier-")
    key = os.urandom(32).hex()
    extra = {"CORDON_TIER": args.tier, "CORDON_MAX_IN_FLIGHT": "1024"}
    extra.update(kv.split("=", 1) for kv in args.extra)
    qdrant = None
    if args.engine == "qdrant":
        qdrant = Qdrant(args.qdrant_bin, work)
        qdrant.start()
        extra.update({"CORDON_STORE": "qdrant", "CORDON_QDRANT_URL": f"http://127.0.0.1:{qdrant.grpc}"})
    port = free_port()
    env = server_env(os.environ, os.path.join(work, "data"), os.path.join(ROOT, "models"), key, port, **extra)
    cordon = Cordon(args.cordon_bin, env, port, os.path.join(work, "cordon.log"))
    storage_pid = lambda: qdrant.proc.pid if qdrant else cordon.proc.pid
    storage_dir = qdrant.storage if qdrant else os.path.join(work, "data")
    result = {"engine": args.engine, "tier": args.tier, "users": args.users,
              "texts_per_user": args.per_user, "clients": args.clients}
    try:
        cordon.start()
        tokens = [hs256_token(key, "bench", f"user-{n}", ttl=86400 * 7) for n in range(args.users)]
        before = footprint(storage_pid(), storage_dir)
        start = time.time()
        latencies, refused, stored = seed(cordon, tokens, args.per_user, args.clients)
        seeded = time.time() - start
        result["seeding"] = {
            "seconds": round(seeded, 1),
            "texts_per_second": round(len(latencies) * args.per_user / seeded, 1),
            "store_ms": {"p50": pct(latencies, 50), "p99": pct(latencies, 99)},
            "refused": refused,
        }
        expected = [args.per_user if ok else 0 for ok in stored]
        result["before"] = before
        result["after_seeding"] = footprint(storage_pid(), storage_dir)
        if qdrant:
            result["after_seeding"]["collections"] = qdrant.collections()
        n = max(1, args.users)
        result["per_user"] = {
            "disk_kib": round((result["after_seeding"]["disk_mib"] - before["disk_mib"]) * 1024 / n, 2),
            "inodes": round((result["after_seeding"]["inodes"] - before["inodes"]) / n, 2),
        }
        result["latency"], added = sample_latency(cordon, tokens, args.samples, args.clients)
        for u in added:
            expected[u] += 1

        # The restart: the storage process stops and starts again.
        if qdrant:
            qdrant.stop()
            started = time.time()
            # Thousands of collections load before Qdrant answers at all.
            qdrant.start(limit=3600)
        else:
            cordon.stop()
            started = time.time()
            cordon.start(wait=False)
        wait_for(cordon.ready, "/readyz after the restart", 600)
        ready = time.time() - started
        result["restart"] = {"ready_s": round(ready, 2)}
        result["restart"].update(sweep(cordon, tokens, expected, args.clients, started))
        result["after_restart"] = footprint(storage_pid(), storage_dir)
    finally:
        cordon.stop()
        if qdrant:
            qdrant.stop()
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    ok = result["restart"]["leaks"] == 0 and result["restart"]["short_answers"] == 0
    subprocess.run(["rm", "-rf", work], check=False)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
