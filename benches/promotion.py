#!/usr/bin/env python3
"""Promotion out of the shared tier: how long a move takes and what the
moving user's requests see meanwhile.

Starts a Cordon in the shared tier (on Qdrant: its own Qdrant from
QDRANT_BIN and two Cordon replicas over it, as in production), seeds
neighbours, then fills one user past CORDON_PROMOTE_AFTER. From the store
that crosses the threshold until a replica counts the finished move
(`cordon_promotions_total`), it keeps storing, searching and listing that
user through both replicas in turn, and checks every full list: each
acknowledged memory exactly once. Prints one JSON object; --json writes it.

    python3 benches/promotion.py qdrant --threshold 1000
    python3 benches/promotion.py edge   --threshold 1000

Python standard library only; Cordon is the release build unless
--cordon-bin says otherwise.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchlib import free_port, hs256_token, server_env
from tier_restart import ROOT, Cordon, Qdrant, pct, status_of, wait_for

BATCH = 50


def promoted(cordon):
    try:
        import urllib.request

        with urllib.request.urlopen(f"{cordon.url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return False
    return any(line.startswith("cordon_promotions_total ") and not line.endswith(" 0")
               for line in text.splitlines())


def store(cordon, token, texts):
    """Stores `texts`; the ids acknowledged (none on failure) and the time."""
    start = time.perf_counter()
    status, body = status_of("POST", f"{cordon.url}/v1/memories", token,
                             {"memories": [{"text": t} for t in texts]}, timeout=120)
    took = (time.perf_counter() - start) * 1000
    ids = body["ids"] if status == 201 else []
    return status, ids, took


def listing(cordon, token):
    """Every id the user lists, page by page; (status, ids, ms)."""
    ids, after = [], None
    start = time.perf_counter()
    while True:
        path = "/v1/memories?limit=100" + (f"&cursor={after}" if after else "")
        status, body = status_of("GET", f"{cordon.url}{path}", token)
        if status != 200:
            return status, ids, (time.perf_counter() - start) * 1000
        ids.extend(m["id"] for m in body["memories"])
        after = body.get("next_cursor")
        if not after:
            return 200, ids, (time.perf_counter() - start) * 1000


def search(cordon, token, n):
    start = time.perf_counter()
    status, _ = status_of("POST", f"{cordon.url}/v1/memories/search", token,
                          {"query": f"note {n} about the garden", "limit": 5})
    return status, (time.perf_counter() - start) * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine", choices=["edge", "qdrant"])
    ap.add_argument("--threshold", type=int, default=1000)
    ap.add_argument("--over", type=int, default=100, help="memories past the threshold")
    ap.add_argument("--neighbours", type=int, default=200)
    ap.add_argument("--qdrant-bin", default=os.environ.get("QDRANT_BIN", "/opt/qdrant/qdrant"))
    ap.add_argument("--cordon-bin", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "cordon"))
    ap.add_argument("--json")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="cordon-promotion-")
    key = os.urandom(32).hex()
    extra = {"CORDON_TIER": "shared", "CORDON_PROMOTE_AFTER": str(args.threshold),
             "CORDON_MAX_IN_FLIGHT": "1024"}
    qdrant = None
    if args.engine == "qdrant":
        qdrant = Qdrant(args.qdrant_bin, work)
        qdrant.start()
        extra.update({"CORDON_STORE": "qdrant", "CORDON_QDRANT_URL": f"http://127.0.0.1:{qdrant.grpc}"})
    port = free_port()
    env = server_env(os.environ, os.path.join(work, "data"), os.path.join(ROOT, "models"), key, port, **extra)
    replicas = [Cordon(args.cordon_bin, env, port, os.path.join(work, "cordon-a.log"))]
    if qdrant:
        # The same settings and secret, another port: a second process.
        port_b = free_port()
        env_b = dict(env, CORDON_BIND=f"127.0.0.1:{port_b}")
        replicas.append(Cordon(args.cordon_bin, env_b, port_b, os.path.join(work, "cordon-b.log")))
    result = {"engine": args.engine, "replicas": len(replicas), "threshold": args.threshold,
              "neighbours": args.neighbours}
    ok = False
    try:
        for r in replicas:
            r.start()
        a = replicas[0]
        for n in range(args.neighbours):
            token = hs256_token(key, "bench", f"neighbour-{n}", ttl=86400)
            store(replicas[n % len(replicas)], token, [f"neighbour {n} likes tea", f"neighbour {n} walks"])
        big = hs256_token(key, "bench", "big-user", ttl=86400)
        acked, n = [], 0
        start = time.time()
        while len(acked) + BATCH < args.threshold:
            status, ids, _ = store(a, big, [f"note {n + i} about the garden" for i in range(BATCH)])
            if status != 201:
                sys.exit(f"a store before the threshold answered {status}")
            acked.extend(ids)
            n += BATCH
        result["filled_s"] = round(time.time() - start, 1)
        before = {"search": [], "list": []}
        for i in range(20):
            before["search"].append(search(a, big, i)[1])
            before["list"].append(listing(a, big)[2])

        # Cross the threshold, then keep going until a replica counts the move.
        crossed = None
        during = {"store": [], "search": [], "list": []}
        statuses, lists, doubled, missed = {}, 0, 0, 0
        while True:
            r = replicas[lists % len(replicas)]
            texts = [f"note {n + i} about the garden" for i in range(10)]
            status, ids, took = store(r, big, texts)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 201:
                acked.extend(ids)
                n += 10
                (during["store"] if crossed else before.setdefault("store", [])).append(took)
            if crossed is None and len(acked) >= args.threshold:
                crossed = time.time()
            if crossed is None:
                continue
            status, took = search(r, big, n)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                during["search"].append(took)
            status, ids, took = listing(r, big)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                during["list"].append(took)
                lists += 1
                doubled += len(ids) - len(set(ids))
                missed += len(set(acked) - set(ids))
            if any(promoted(x) for x in replicas):
                break
            if time.time() - crossed > 1200:
                sys.exit("the move did not finish within 20 minutes")
        result["move_s"] = round(time.time() - crossed, 1)
        final = [listing(x, big)[1] for x in replicas]
        result["memories"] = len(acked)
        result["after_move"] = {
            "every_replica_lists_all": all(sorted(f) == sorted(acked) for f in final),
        }
        summary = lambda xs: {"p50": pct(xs, 50), "p99": pct(xs, 99), "n": len(xs)}
        result["before_ms"] = {k: summary(v) for k, v in before.items()}
        result["during_ms"] = {k: summary(v) for k, v in during.items()}
        result["during"] = {"statuses": statuses, "full_lists": lists,
                            "ids_listed_twice": doubled, "acknowledged_ids_missing": missed}
        ok = doubled == 0 and missed == 0 and result["after_move"]["every_replica_lists_all"]
    finally:
        for r in replicas:
            r.stop()
        if qdrant:
            qdrant.stop()
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    subprocess.run(["rm", "-rf", work], check=False)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
