#!/usr/bin/env python3
"""What the access log adds to a search: two servers, one with
CORDON_ACCESS_LOG=true and one with false, searched in alternation.

Starts two `cordon serve` (the binary given with --bin), each on a fresh data
directory (or, with --qdrant-url, its own collection prefix on that Qdrant
server), stores the same --memories memories for one user in each, then
runs --rounds rounds of --per-round searches against each server in turn
(one connection each, one search at a time), so that drift of the machine
falls on both alike. Prints the p50 and p95 of each and the p50 difference.
--sealed runs both with a KEK (the log's entries are then sealed too).

    python3 benches/access_log_cost.py --bin "$CARGO_TARGET_DIR/release/cordon"
    python3 benches/access_log_cost.py --bin ... --qdrant-url http://127.0.0.1:6334

Python standard library only.
"""

import argparse
import http.client
import json
import os
import secrets
import signal
import statistics
import tempfile
import time

from benchlib import free_port, hs256_token, serve, server_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPICS = ["coffee", "hiking", "a sister in Lyon", "peanut allergy", "the dentist", "jazz records",
          "a trip to Kyoto", "the garden", "chess on Sundays", "a red bicycle"]


def start(args, work, name, jwt_key, log_on):
    port = free_port()
    extra = {"CORDON_ACCESS_LOG": "true" if log_on else "false"}
    if args.sealed:
        extra["CORDON_KEK"] = secrets.token_hex(32)
    if args.qdrant_url:
        extra.update({"CORDON_STORE": "qdrant", "CORDON_QDRANT_URL": args.qdrant_url,
                      "CORDON_COLLECTION_PREFIX": f"alog_{secrets.token_hex(4)}_"})
    data = os.path.join(work, name)
    env = server_env(os.environ, data, os.path.join(ROOT, "models"), jwt_key, port, **extra)
    proc = serve(args.bin, env, port, os.path.join(work, f"{name}.log"))
    return proc, http.client.HTTPConnection("127.0.0.1", port, timeout=120)


def request(conn, method, path, headers, body=None):
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    resp = conn.getresponse()
    resp.read()
    return resp.status


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--memories", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=50)
    ap.add_argument("--sealed", action="store_true")
    ap.add_argument("--qdrant-url")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="cordon-alog-")
    jwt_key = secrets.token_hex(32)
    servers = {"on": start(args, work, "on", jwt_key, True), "off": start(args, work, "off", jwt_key, False)}
    token = hs256_token(jwt_key, "bench", "reader")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    times = {"on": [], "off": []}
    try:
        for _, conn in servers.values():
            for start_at in range(0, args.memories, 64):
                batch = [{"text": f"note {n} about {TOPICS[n % len(TOPICS)]}"}
                         for n in range(start_at, min(start_at + 64, args.memories))]
                assert request(conn, "POST", "/v1/memories", headers, {"memories": batch}) == 201
            # Warm up: the model's first calls and the engine's caches.
            for i in range(20):
                request(conn, "POST", "/v1/memories/search", headers, {"query": f"warm {i}"})
        for r in range(args.rounds):
            for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                conn = servers[name][1]
                for i in range(args.per_round):
                    body = {"query": f"what about {TOPICS[(r + i) % len(TOPICS)]} {i}", "limit": 10}
                    t = time.perf_counter()
                    assert request(conn, "POST", "/v1/memories/search", headers, body) == 200
                    times[name].append((time.perf_counter() - t) * 1000)
        conn = servers["on"][1]
        conn.request("GET", "/v1/access-log?limit=1", headers=headers)
        entries = json.loads(conn.getresponse().read())
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    engine = "qdrant" if args.qdrant_url else "edge"
    sealed = " sealed" if args.sealed else ""
    for name in ("on", "off"):
        t = sorted(times[name])
        print(f"{engine}{sealed}, access log {name}: {len(t)} searches, "
              f"p50 {statistics.median(t):.2f} ms, p95 {t[int(len(t) * 0.95) - 1]:.2f} ms")
    diff = statistics.median(times["on"]) - statistics.median(times["off"])
    print(f"the access log adds {diff:+.2f} ms to a search's p50 "
          f"({diff / statistics.median(times['off']) * 100:+.1f}%); the last entry: {entries['entries'][0]['action']}")


if __name__ == "__main__":
    main()
