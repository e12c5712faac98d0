#!/usr/bin/env python3
"""Memory use of one user's export: the server's RSS while it answers a large export.

Starts `cordon serve` (the binary given with --bin) on a fresh data directory,
stores --memories memories for one user (batches of 64), then reads
`GET /v1/memories/export` while sampling the server's VmRSS every 5 ms, and
prints the RSS before the export, its peak during it, the bytes received and
the time taken. A server that builds the whole export in memory grows with
the user's size; one that streams it stays near a page of memories.

    python3 benches/export_memory.py --bin "$CARGO_TARGET_DIR/debug/cordon" [--memories 20000]

Python standard library only.
"""

import argparse
import http.client
import json
import os
import secrets
import signal
import sys
import tempfile
import threading
import time

from benchlib import hs256_token, free_port, server_env, serve, rss_kib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--memories", type=int, default=20000)
    ap.add_argument("--json")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="cordon-export-")
    jwt_key = secrets.token_hex(32)
    port = free_port()
    env = server_env(os.environ, os.path.join(work, "data"), os.path.join(ROOT, "models"), jwt_key, port, CORDON_REQUEST_TIMEOUT_SECS="300")
    proc = serve(args.bin, env, port, os.path.join(work, "cordon.log"))
    token = hs256_token(jwt_key, "bench", "exporter")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        for start in range(0, args.memories, 64):
            batch = [{"text": f"memory {n}: something the exporter once said, kept for later",
                      "metadata": {"n": n}} for n in range(start, min(start + 64, args.memories))]
            conn.request("POST", "/v1/memories", body=json.dumps({"memories": batch}), headers=headers)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 201, resp.status
        time.sleep(1)
        before = rss_kib(proc.pid)
        peak = [before]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_kib(proc.pid))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.perf_counter()
        conn.request("GET", "/v1/memories/export", headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - started
        done.set()
        sampler.join()
        count = len(json.loads(body)["memories"])
        row = {
            "memories": count,
            "bytes": len(body),
            "seconds": elapsed,
            "rss_before_kib": before,
            "rss_peak_kib": peak[0],
            "rss_growth_kib": peak[0] - before,
            "chunked": resp.getheader("transfer-encoding") == "chunked",
        }
        print(
            f"exported {count} memories ({len(body) / 1e6:.1f} MB) in {elapsed:.2f} s; "
            f"RSS {before / 1024:.1f} MiB before, peak {peak[0] / 1024:.1f} MiB "
            f"(+{(peak[0] - before) / 1024:.1f} MiB); chunked: {row['chunked']}"
        )
        if count != args.memories:
            sys.exit(f"expected {args.memories} memories")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=2)


if __name__ == "__main__":
    main()
