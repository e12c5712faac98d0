#!/usr/bin/env python3
"""Write latency into one shard: stores and deletes by C concurrent clients of one user.

Starts `cordon serve` (the binary given with --bin) on a fresh data directory;
one user's C clients (keep-alive connections, one request in flight each)
store --memories single-text memories, then delete all of them. Every
request lands in the same shard, which is where concurrent writes can share
a flush. Prints requests per second and p50/p99 latency for each phase; run
it once per binary and client count to compare.

    python3 benches/write_latency.py --bin "$CARGO_TARGET_DIR/release/cordon" \\
        --clients 16 [--memories 2000] [--json out.json]

Python standard library only.
"""

import argparse
import http.client
import json
import os
import secrets
import signal
import statistics
import sys
import tempfile
import threading
import time

from benchlib import hs256_token, free_port, server_env, serve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def run_phase(port, token, jobs, clients):
    """Runs `jobs` (method, path, body) over `clients` connections."""
    lock = threading.Lock()
    queue = list(reversed(jobs))
    latencies, results, errors = [], [], []

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        while True:
            with lock:
                if not queue:
                    break
                method, path, body = queue.pop()
            started = time.perf_counter()
            conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                if resp.status >= 300:
                    errors.append(resp.status)
                elif raw:
                    results.append(json.loads(raw))
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return latencies, results, errors, wall


def summary(name, latencies, errors, wall):
    row = {
        "phase": name,
        "requests": len(latencies),
        "errors": len(errors),
        "per_second": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }
    print(
        f"{name:>7}: {row['requests']} requests, {row['errors']} errors, "
        f"{row['per_second']:.1f}/s, p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms",
        flush=True,
    )
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--memories", type=int, default=2000)
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    ap.add_argument("--json")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="cordon-writes-")
    jwt_key = secrets.token_hex(32)
    port = free_port()
    env = server_env(os.environ, os.path.join(work, "data"), os.path.join(ROOT, "models"), jwt_key, port)
    for kv in args.env:
        key, _, value = kv.partition("=")
        env[key] = value
    proc = serve(args.bin, env, port, os.path.join(work, "cordon.log"))
    try:
        token = hs256_token(jwt_key, "bench", "writer")
        # The shard exists before timing starts: its creation is not a write.
        run_phase(port, token, [("POST", "/v1/memories", {"text": "warm-up"})], 1)
        stores = [
            ("POST", "/v1/memories", {"text": f"memory {n}: a short note for the write benchmark"})
            for n in range(args.memories)
        ]
        lat, results, errors, wall = run_phase(port, token, stores, args.clients)
        rows = [summary("store", lat, errors, wall)]
        ids = [i for r in results for i in r["ids"]]
        deletes = [("DELETE", f"/v1/memories/{i}", None) for i in ids]
        lat, _, errors, wall = run_phase(port, token, deletes, args.clients)
        rows.append(summary("delete", lat, errors, wall))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bin": args.bin, "clients": args.clients, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
