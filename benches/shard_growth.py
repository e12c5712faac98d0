#!/usr/bin/env python3
"""One heavy user's shard on the embedded engine: disk, WAL, maps, deleted text.

Starts `cordon serve` (the binary given with --bin) on a fresh data directory,
has one user store --memories memories (batches of 64) and delete --deletes of
them one by one, then reports the user's shard at four moments: after the
stores, right after the deletes, after --settle seconds, and after a graceful
restart (SIGTERM, start again, one read to open the shard):

- disk: allocated bytes of the shard directory (as `du` counts them);
- WAL: files and bytes in the shard's `wal/`;
- maps: lines of /proc/<pid>/maps that name a file inside the shard;
- deleted text left: how many deleted memories' texts are still found, as
  bytes, in any file under the whole data directory.

    python3 benches/shard_growth.py --bin "$CARGO_TARGET_DIR/debug/cordon" \\
        [--memories 6400] [--deletes 4800] [--settle 70] [--env KEY=VALUE ...]

Python standard library only.
"""

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from benchlib import call, disk_bytes, free_port, hs256_token

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Server:
    """A `cordon serve` child process on a loopback port."""

    def __init__(self, binary, env, log_path):
        self.port = free_port()
        env = dict(env, CORDON_BIND=f"127.0.0.1:{self.port}")
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen([binary, "serve"], env=env, stdout=self.log, stderr=self.log)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"cordon exited at start (see {log_path})")
            try:
                if call("GET", self.base + "/readyz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.proc.kill()
        sys.exit(f"cordon did not become ready (see {log_path})")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def shard_dir(data_dir: str) -> str:
    root = os.path.join(data_dir, "shards")
    live = [d for d in os.listdir(root) if not d.startswith(".")]
    if len(live) != 1:
        sys.exit(f"expected one shard, found {live}")
    return os.path.join(root, live[0])


def wal(shard: str):
    files = [os.path.join(shard, "wal", f) for f in os.listdir(os.path.join(shard, "wal"))]
    return len(files), sum(os.path.getsize(f) for f in files)


def shard_maps(pid: int, shard: str) -> int:
    with open(f"/proc/{pid}/maps") as f:
        return sum(1 for line in f if shard + "/" in line)


def texts_left(data_dir: str, pattern: bytes) -> set:
    found = set()
    regex = re.compile(pattern)
    for dirpath, _, files in os.walk(data_dir):
        for name in files:
            try:
                with open(os.path.join(dirpath, name), "rb") as f:
                    found.update(regex.findall(f.read()))
            except FileNotFoundError:
                pass
    return found


def snapshot(label, server, data_dir, run):
    shard = shard_dir(data_dir)
    files, wal_bytes = wal(shard)
    row = {
        "moment": label,
        "disk_bytes": disk_bytes(shard),
        "wal_files": files,
        "wal_bytes": wal_bytes,
        "maps": shard_maps(server.proc.pid, shard),
        "deleted_texts_left": len(texts_left(data_dir, rb"gone-" + run.encode() + rb"-(\d+)")),
        "kept_texts_found": len(texts_left(data_dir, rb"kept-" + run.encode() + rb"-(\d+)")),
    }
    print(
        f"{label:>16}: disk {row['disk_bytes'] / 1e6:6.1f} MB, WAL {files:3d} files "
        f"({wal_bytes / 1e6:5.1f} MB), maps {row['maps']:3d}, "
        f"deleted texts left {row['deleted_texts_left']:5d}, kept texts found {row['kept_texts_found']:5d}",
        flush=True,
    )
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True, help="the cordon binary")
    ap.add_argument("--memories", type=int, default=6400)
    ap.add_argument("--deletes", type=int, default=4800)
    ap.add_argument("--settle", type=float, default=70.0, help="seconds to wait after the deletes")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    if args.deletes > args.memories:
        ap.error("--deletes must not exceed --memories")

    work = tempfile.mkdtemp(prefix="cordon-growth-")
    data_dir = os.path.join(work, "data")
    jwt_key = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORDON_")}
    env.update({
        "CORDON_DATA_DIR": data_dir,
        "CORDON_MODEL_DIR": os.path.join(ROOT, "models"),
        "CORDON_JWT_HS256_SECRET": jwt_key,
        "RUST_LOG": env.get("RUST_LOG", "info,qdrant_edge::common::flags=error"),
    })
    for kv in args.env:
        key, _, value = kv.partition("=")
        env[key] = value
    token = hs256_token(jwt_key, "growth", "heavy-user")
    run = secrets.token_hex(3)
    log = os.path.join(work, "cordon.log")
    rows = []
    server = Server(args.bin, env, log)
    try:
        ids = []
        # The first --deletes memories are the ones deleted later.
        for start in range(0, args.memories, 64):
            batch = []
            for n in range(start, min(start + 64, args.memories)):
                tag = f"gone-{run}-{n}" if n < args.deletes else f"kept-{run}-{n}"
                batch.append({"text": f"{tag} note {n}: the heavy user wrote this down to remember it"})
            status, body = call("POST", server.base + "/v1/memories", token, {"memories": batch})
            assert status == 201, status
            ids.extend(body["ids"])
        rows.append(snapshot("after stores", server, data_dir, run))
        started = time.time()
        for memory_id in ids[: args.deletes]:
            status, _ = call("DELETE", f"{server.base}/v1/memories/{memory_id}", token)
            assert status == 204, status
        print(f"{args.deletes} deletes took {time.time() - started:.1f} s", flush=True)
        rows.append(snapshot("after deletes", server, data_dir, run))
        time.sleep(args.settle)
        rows.append(snapshot(f"after {args.settle:.0f} s", server, data_dir, run))
        server.stop()
        server = Server(args.bin, env, log)
        status, page = call("GET", server.base + "/v1/memories?limit=1", token)
        assert status == 200 and page["memories"], "the kept memories are readable"
        rows.append(snapshot("after restart", server, data_dir, run))
        status, body = call("GET", server.base + "/v1/memories/export", token)
        kept = len(body["memories"])
        print(f"memories readable after the restart: {kept} (expected {args.memories - args.deletes})")
        if kept != args.memories - args.deletes:
            sys.exit(1)
    finally:
        server.stop()
    # The server logs each rewrite with its points and duration.
    rewrites = []
    with open(log, errors="replace") as f:
        for line in f:
            if "rewrote shard" in line:
                fields = dict(re.findall(r"(\w+)=(\d+)", line))
                rewrites.append({"points": int(fields.get("points", 0)), "ms": int(fields.get("ms", 0))})
    for r in rewrites:
        print(f"rewrite: {r['points']} points in {r['ms']} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"memories": args.memories, "deletes": args.deletes, "rows": rows,
                       "rewrites": rewrites}, f, indent=2)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
