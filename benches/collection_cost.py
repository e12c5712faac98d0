#!/usr/bin/env python3
"""Storage cost per user collection: memory and disk, for either engine.

Starts a Cordon (debug build, built by scripts/cordon), stores M memories for
each of N users through the HTTP API (one request of M texts per user), and
reports how much the storage process's resident memory, memory maps and disk
grew per user collection.

    python3 benches/collection_cost.py edge   [--users 1000] [--per-user 20]
    python3 benches/collection_cost.py qdrant --qdrant-pid PID --qdrant-storage DIR \\
        [--qdrant-url http://127.0.0.1:6334]

For `edge` the storage process is Cordon itself (its figures include nothing
but the shards it opened: the model is loaded before the first reading). For
`qdrant` it is the Qdrant server given by PID, whose storage directory is
measured; collections are created under a fresh prefix and erased at the end
unless --keep is given. Python standard library only.
"""

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error

from benchlib import call, disk_bytes, free_port, hs256_token, rss_kib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def maps(pid: int) -> int:
    with open(f"/proc/{pid}/maps") as f:
        return sum(1 for _ in f)


def snapshot(pid, storage):
    return {"rss_kib": rss_kib(pid), "maps": maps(pid), "disk": disk_bytes(storage)}


SENTENCES = [
    "prefers window seats on long flights",
    "is allergic to peanuts and shellfish",
    "has a standup every weekday at 9:30",
    "is learning to play the cello",
    "keeps a sourdough starter named Clint",
    "runs the payments migration this quarter",
    "likes their coffee black with no sugar",
    "has a dentist appointment next Tuesday",
    "is reading a history of the Hanseatic League",
    "wants reminders in the morning, not at night",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine", choices=["edge", "qdrant"])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--per-user", type=int, default=20)
    ap.add_argument("--qdrant-url", default="http://127.0.0.1:6334")
    ap.add_argument("--qdrant-pid", type=int)
    ap.add_argument("--qdrant-storage")
    ap.add_argument("--keep", action="store_true", help="leave the collections in place")
    args = ap.parse_args()
    if args.engine == "qdrant" and not (args.qdrant_pid and args.qdrant_storage):
        ap.error("qdrant needs --qdrant-pid and --qdrant-storage")

    subprocess.run([os.path.join(ROOT, "scripts/cordon"), "--version"], check=True,
                   stdout=subprocess.DEVNULL)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/cordon/target"))
    binary = os.path.join(target, "debug", "cordon")

    data_dir = tempfile.mkdtemp(prefix="cordon-cost-")
    jwt_key = secrets.token_hex(32)
    port = free_port()
    env = dict(os.environ)
    env.update({
        "CORDON_BIND": f"127.0.0.1:{port}",
        "CORDON_MODEL_DIR": os.path.join(ROOT, "models"),
        "CORDON_JWT_HS256_SECRET": jwt_key,
        "CORDON_SERVER_SECRET": secrets.token_hex(32),
        "CORDON_STORE": args.engine,
        "CORDON_COLLECTION_PREFIX": f"cordon_cost_{secrets.token_hex(4)}_",
        "CORDON_MAX_ITEMS": str(max(64, args.per_user)),
        "RUST_LOG": "warn,qdrant_edge::common::flags=error",
    })
    # Each engine refuses the other's settings.
    if args.engine == "edge":
        env["CORDON_DATA_DIR"] = data_dir
    else:
        env["CORDON_QDRANT_URL"] = args.qdrant_url
    server = subprocess.Popen([binary, "serve"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if call("GET", base + "/readyz")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.5)
        else:
            sys.exit("cordon did not become ready")

        pid = server.pid if args.engine == "edge" else args.qdrant_pid
        storage = os.path.join(data_dir, "shards") if args.engine == "edge" else args.qdrant_storage
        before = snapshot(pid, storage)
        started = time.time()
        tokens = []
        for u in range(args.users):
            token = hs256_token(jwt_key, "cost", f"user-{u}", ttl=3600)
            tokens.append(token)
            memories = [
                {"text": f"user {u} {SENTENCES[(u + j) % len(SENTENCES)]} (note {j})"}
                for j in range(args.per_user)
            ]
            status, _ = call("POST", base + "/v1/memories", token, {"memories": memories})
            assert status == 201, status
            if (u + 1) % 100 == 0:
                print(f"  {u + 1} users stored ({time.time() - started:.0f} s)", file=sys.stderr)
        elapsed = time.time() - started
        time.sleep(2)  # let the engine settle (Qdrant flushes in the background)
        after = snapshot(pid, storage)

        n = args.users
        result = {
            "engine": args.engine,
            "users": n,
            "memories_per_user": args.per_user,
            "store_seconds": round(elapsed, 1),
            "rss_mib_before": round(before["rss_kib"] / 1024, 1),
            "rss_mib_after": round(after["rss_kib"] / 1024, 1),
            "rss_kib_per_user": round((after["rss_kib"] - before["rss_kib"]) / n, 1),
            "maps_per_user": round((after["maps"] - before["maps"]) / n, 1),
            "disk_mib_total": round(after["disk"] / 2**20, 1),
            "disk_kib_per_user": round((after["disk"] - before["disk"]) / 1024 / n, 1),
        }
        print(json.dumps(result, indent=2))
        if not args.keep:
            for token in tokens:
                call("DELETE", base + "/v1/memories", token)
    finally:
        server.terminate()
        server.wait()
        subprocess.run(["rm", "-rf", data_dir], check=False)


if __name__ == "__main__":
    main()
