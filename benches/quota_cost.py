#!/usr/bin/env python3
"""What one user at the default quotas costs: disk, and the time of a search.

Starts `cordon serve` (the binary given with --bin) on a fresh data
directory, or on a Qdrant server (--qdrant-url, with --qdrant-storage to
measure its disk), with the quotas off, and stores --memories memories of
--text-bytes each for one user (batches of 64; each text is a sentence and
one long word of random letters and digits, which the tokenizer takes as a
single unknown token, so the memories are large but cheap to embed, and
compress about as little as text does). It then prints the disk the user's
memories take (allocated blocks, as `du` counts them, of the data directory
or of Qdrant's storage, before and after), and the p50 and p95 of 50
searches of that user. With the defaults, 10,000 memories of 3,355 bytes are
the 32 MiB of CORDON_MAX_BYTES_PER_USER at the memory quota's count.

    python3 benches/quota_cost.py --bin "$CARGO_TARGET_DIR/release/cordon"
    python3 benches/quota_cost.py --bin ... --qdrant-url http://127.0.0.1:6334 --qdrant-storage /path/to/storage

Python standard library only.
"""

import argparse
import http.client
import json
import os
import random
import secrets
import signal
import string
import statistics
import tempfile
import time

from benchlib import disk_bytes, free_port, hs256_token, serve, server_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALPHABET = string.ascii_lowercase + string.digits


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--memories", type=int, default=10_000)
    ap.add_argument("--text-bytes", type=int, default=3355)
    ap.add_argument("--qdrant-url")
    ap.add_argument("--qdrant-storage")
    ap.add_argument("--json")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="cordon-quota-")
    data = os.path.join(work, "data")
    jwt_key = secrets.token_hex(32)
    port = free_port()
    extra = {"CORDON_MAX_MEMORIES_PER_USER": "0", "CORDON_MAX_BYTES_PER_USER": "0",
             "CORDON_MAX_TEXT_BYTES": str(max(8192, args.text_bytes)),
             "CORDON_REQUEST_TIMEOUT_SECS": "300"}
    if args.qdrant_url:
        extra.update({"CORDON_STORE": "qdrant", "CORDON_QDRANT_URL": args.qdrant_url,
                      "CORDON_COLLECTION_PREFIX": f"quota_{secrets.token_hex(4)}_"})
    env = server_env(os.environ, data, os.path.join(ROOT, "models"), jwt_key, port, **extra)
    measured = args.qdrant_storage if args.qdrant_url else data
    proc = serve(args.bin, env, port, os.path.join(work, "cordon.log"))
    token = hs256_token(jwt_key, "bench", "heavy")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        before = disk_bytes(measured) if measured and os.path.isdir(measured) else 0
        head = "a note the user wanted kept, number "
        started = time.perf_counter()
        for start in range(0, args.memories, 64):
            batch = []
            for n in range(start, min(start + 64, args.memories)):
                text = f"{head}{n} "
                pad = max(0, args.text_bytes - len(text))
                batch.append({"text": text + "".join(random.choices(ALPHABET, k=pad))})
            conn.request("POST", "/v1/memories", body=json.dumps({"memories": batch}), headers=headers)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 201, resp.status
        stored_in = time.perf_counter() - started
        time.sleep(2)
        after = disk_bytes(measured) if measured else 0
        times = []
        for i in range(50):
            body = json.dumps({"query": f"the note number {i * 97 % args.memories}", "limit": 10})
            t = time.perf_counter()
            conn.request("POST", "/v1/memories/search", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            times.append(time.perf_counter() - t)
            assert resp.status == 200, resp.status
        times.sort()
        row = {
            "memories": args.memories,
            "text_bytes": args.text_bytes,
            "engine": "qdrant" if args.qdrant_url else "edge",
            "disk_bytes": after - before,
            "disk_bytes_per_memory": (after - before) / args.memories,
            "store_seconds": stored_in,
            "search_p50_ms": statistics.median(times) * 1000,
            "search_p95_ms": times[int(len(times) * 0.95) - 1] * 1000,
        }
        print(f"{row['engine']}: {args.memories} memories of {args.text_bytes} B in {stored_in:.0f} s; "
              f"disk +{row['disk_bytes'] / 2**20:.1f} MiB ({row['disk_bytes_per_memory'] / 1024:.1f} KiB each); "
              f"search p50 {row['search_p50_ms']:.1f} ms, p95 {row['search_p95_ms']:.1f} ms")
        conn.request("DELETE", "/v1/memories", headers=headers)
        conn.getresponse().read()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=2)


if __name__ == "__main__":
    main()
