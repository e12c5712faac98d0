#!/usr/bin/env python3
"""Memory use of one user's export: the server's RSS while it answers a large export.

Starts `cordon serve` (the binary given with --bin) on a fresh data directory,
stores --memories memories for one user (batches of 64), then reads
`GET /v1/memories/export` while sampling the server's VmRSS every 5 ms, and
prints the RSS before the export, its peak during it, the bytes received and
the time taken. A server that builds the whole export in memory grows with
the user's size; one that streams it stays near a page of memories.

With --unread N it then opens N more exports of the same user on sockets
with a 4 KiB receive buffer, reads none of them, and prints the RSS they
hold once the server waits on them: what one user's unread exports cost
(the server's stall limit, 30 s by default, ends them; the reading is taken
well before). --text-bytes pads every text to that many bytes with one long
word, which the tokenizer takes as a single unknown token, so the memories
are large but cheap to embed.

    python3 benches/export_memory.py --bin "$CARGO_TARGET_DIR/debug/cordon" [--memories 20000]
    python3 benches/export_memory.py --bin ... --memories 2000 --text-bytes 8000 --unread 32

Python standard library only.
"""

import argparse
import http.client
import json
import os
import secrets
import signal
import socket
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
    ap.add_argument("--text-bytes", type=int, default=0)
    ap.add_argument("--unread", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="cordon-export-")
    jwt_key = secrets.token_hex(32)
    port = free_port()
    env = server_env(os.environ, os.path.join(work, "data"), os.path.join(ROOT, "models"), jwt_key, port,
                     CORDON_REQUEST_TIMEOUT_SECS="300",
                     CORDON_MAX_MEMORIES_PER_USER="0", CORDON_MAX_BYTES_PER_USER="0",
                     CORDON_MAX_TEXT_BYTES=str(max(8192, args.text_bytes + 64)),
                     CORDON_MAX_IN_FLIGHT_PER_USER=str(max(64, args.unread + 1)))
    proc = serve(args.bin, env, port, os.path.join(work, "cordon.log"))
    token = hs256_token(jwt_key, "bench", "exporter")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        for start in range(0, args.memories, 64):
            pad = " " + "z" * args.text_bytes if args.text_bytes else ""
            batch = [{"text": f"memory {n}: something the exporter once said, kept for later{pad}",
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
        if args.unread:
            row.update(unread(args.unread, port, token, proc.pid))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=2)


def unread(n: int, port: int, token: str, pid: int) -> dict:
    """Opens `n` exports, reads only their status lines, and measures the
    server's RSS once it waits on all of them."""
    time.sleep(1)
    before = rss_kib(pid)
    sockets = []
    request = (f"GET /v1/memories/export HTTP/1.0\r\nHost: cordon\r\n"
               f"Authorization: Bearer {token}\r\n\r\n").encode()
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(request)
        status = s.recv(64).split(b"\r\n")[0].decode(errors="replace")
        assert " 200 " in status, status
        sockets.append(s)
    time.sleep(5)
    held = rss_kib(pid)
    for s in sockets:
        s.close()
    print(f"{n} unread exports: RSS {before / 1024:.1f} MiB before, {held / 1024:.1f} MiB while "
          f"they wait (+{(held - before) / 1024:.1f} MiB, {(held - before) / n:.0f} KiB each)")
    return {"unread": n, "unread_rss_before_kib": before, "unread_rss_held_kib": held,
            "unread_kib_each": (held - before) / n}


if __name__ == "__main__":
    main()
