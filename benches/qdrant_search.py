#!/usr/bin/env python3
"""A lone search on the Qdrant server engine: Cordon against the same model
and data searched in-process by Python, on the same Qdrant, in one run.

    ~/.cache/cordon/bench-venv/bin/python benches/qdrant_search.py \\
        --qdrant-bin /opt/qdrant/qdrant [--cordon-bin BIN] [--rounds 10] [--block 50]

Starts a Qdrant server (from --qdrant-bin, on free loopback ports, in a
temporary storage directory) and a Cordon on it (CORDON_STORE=qdrant, the
release build unless --cordon-bin says otherwise), stores 100 memories for
one user through Cordon, then times one search at a time, in rounds: each
round runs a block of --block searches per path, the paths in a rotating
order. Blocks rather than single searches, because both sides run ONNX
Runtime with spinning threads: a search right after the other side's model
call would find the cores still taken by its threads.

The paths:

  * cordon: POST /v1/memories/search over HTTP (a keep-alive connection,
    the user's JWT), 10 results;
  * python: what a Python memory library does in its own process: embed
    the query with onnxruntime (benches/embed_baseline.py's PythonEmbedder,
    the plain export, batch 1), then one query to Qdrant's REST API for the
    10 nearest points of the same collection, filtered by the same owner
    field, payload included (one keep-alive connection);
  * the pieces: Python's embedding alone, Qdrant's query alone (from
    Python, vector given), Cordon's POST /v1/embeddings alone.

Before timing, counts the gRPC requests Qdrant answers (its /metrics) over
100 of Cordon's searches: how many round trips one search makes.

Reports p50, p95 and p99 per path over all blocks, in milliseconds, and
the same for cordon - python and cordon - (its embedding + Qdrant's query)
as differences of per-block medians.
"""

import argparse
import base64
import contextlib
import http.client
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import benchlib
import embed_baseline as eb

QUERY = "what does my sister like to drink"
LIMIT = 10


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Conn:
    """One keep-alive JSON connection."""

    def __init__(self, port: int, headers: dict):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Content-Type": "application/json", **headers}

    def post(self, path: str, body: dict):
        self.conn.request("POST", path, body=json.dumps(body), headers=self.headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path} answered {resp.status}: {raw[:300]!r}")
        return json.loads(raw)

    def get(self, path: str):
        self.conn.request("GET", path, headers=self.headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path} answered {resp.status}: {raw[:300]!r}")
        return json.loads(raw)


def wait_http(port: int, path: str, proc, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            sys.exit(f"{what} did not start")
        time.sleep(0.2)


def grpc_requests(port: int) -> dict:
    """Qdrant's count of gRPC responses, per endpoint, from its /metrics."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    counts = {}
    for line in c.getresponse().read().decode().splitlines():
        if line.startswith("grpc_responses_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels] = counts.get(labels, 0) + float(value)
    return counts


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, round((len(s) - 1) * q))]


def main() -> int:
    target_dir = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/cordon/target"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qdrant-bin", required=True, help="a Qdrant server binary (1.18+)")
    ap.add_argument("--cordon-bin", default=os.path.join(target_dir, "release", "cordon"))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--block", type=int, default=50, help="searches per path per round")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="Python's intra-op threads")
    ap.add_argument("--model-dir", default=os.path.join(eb.ROOT, "models"))
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()

    py = eb.PythonEmbedder(args.model_dir, args.threads)
    with contextlib.ExitStack() as stack:
        tmp = tempfile.mkdtemp(prefix="cordon-qsearch-")
        stack.callback(shutil.rmtree, tmp, True)
        q_http, q_grpc = benchlib.free_port(), benchlib.free_port()
        qdir = os.path.join(tmp, "qdrant")
        os.makedirs(qdir)
        qenv = {k: v for k, v in os.environ.items() if not k.startswith("QDRANT__")}
        qenv.update({
            "QDRANT__SERVICE__HOST": "127.0.0.1",
            "QDRANT__SERVICE__HTTP_PORT": str(q_http),
            "QDRANT__SERVICE__GRPC_PORT": str(q_grpc),
            "QDRANT__STORAGE__STORAGE_PATH": os.path.join(qdir, "storage"),
            "QDRANT__STORAGE__SNAPSHOTS_PATH": os.path.join(qdir, "snapshots"),
            "QDRANT__TELEMETRY_DISABLED": "true",
        })
        qlog = open(os.path.join(tmp, "qdrant.log"), "ab")
        # cwd is its own directory, so that no ./config/ of the caller's is read.
        qproc = subprocess.Popen([args.qdrant_bin], env=qenv, cwd=qdir, stdout=qlog, stderr=qlog)
        stack.callback(qproc.wait)
        stack.callback(qproc.terminate)
        wait_http(q_http, "/readyz", qproc, "qdrant")

        port = benchlib.free_port()
        key = secrets.token_hex(24)
        env = benchlib.server_env(os.environ, os.path.join(tmp, "data"), args.model_dir, key, port,
                                  CORDON_STORE="qdrant",
                                  CORDON_SERVER_SECRET=secrets.token_hex(32),
                                  CORDON_QDRANT_URL=f"http://127.0.0.1:{q_grpc}")
        cproc = benchlib.serve(args.cordon_bin, env, port, os.path.join(tmp, "cordon.log"))
        stack.callback(cproc.wait)
        stack.callback(cproc.terminate)

        token = benchlib.hs256_token(key, "bench", "alice")
        cordon = Conn(port, {"Authorization": f"Bearer {token}"})
        texts = [f"memory {i}: {t}" for i, t in enumerate(eb.make_texts(100, seed=5))]
        for i in range(0, len(texts), 50):
            cordon.conn.request("POST", "/v1/memories", headers=cordon.headers,
                                body=json.dumps({"memories": [{"text": t} for t in texts[i:i + 50]]}))
            resp = cordon.conn.getresponse()
            raw = resp.read()
            if resp.status != 201:
                sys.exit(f"store answered {resp.status}: {raw[:300]!r}")

        qdrant = Conn(q_http, {})
        names = [c["name"] for c in qdrant.get("/collections")["result"]["collections"]]
        users = [n for n in names if n.startswith("cordon_") and n != "cordon_access"]
        if len(users) != 1:
            sys.exit(f"expected one user collection, found {names}")
        collection = users[0]
        point = qdrant.post(f"/collections/{collection}/points/scroll",
                            {"limit": 1, "with_payload": True})["result"]["points"][0]
        owner = point["payload"]["owner"]
        where = {"must": [{"key": "owner", "match": {"value": owner}}]}
        vector = [float(x) for x in py.embed([QUERY])[0]]

        def cordon_search():
            found = cordon.post("/v1/memories/search", {"query": QUERY, "limit": LIMIT})["results"]
            assert len(found) == LIMIT

        def cordon_embed():
            data = cordon.post("/v1/embeddings", {"input": QUERY, "encoding_format": "base64"})["data"]
            assert len(base64.b64decode(data[0]["embedding"])) == 4 * 384

        def qdrant_query(v):
            found = qdrant.post(f"/collections/{collection}/points/query",
                                {"query": v, "limit": LIMIT, "with_payload": True,
                                 "filter": where})["result"]["points"]
            assert len(found) == LIMIT

        def python_search():
            qdrant_query([float(x) for x in py.embed([QUERY])[0]])

        paths = {
            "cordon search (HTTP)": cordon_search,
            "python: embed + Qdrant query": python_search,
            "python embed alone": lambda: py.embed([QUERY]),
            "Qdrant query alone (REST, from Python)": lambda: qdrant_query(vector),
            "cordon /v1/embeddings alone": cordon_embed,
        }
        names = list(paths)
        cordon_search()
        before = grpc_requests(q_http)
        for _ in range(100):
            cordon_search()
        after = grpc_requests(q_http)
        per_search = {k: (after.get(k, 0) - before.get(k, 0)) / 100 for k in after}
        per_search = {k: v for k, v in per_search.items() if v}
        for _ in range(30):
            for f in paths.values():
                f()
        samples = {n: [] for n in names}
        blocks = {n: [] for n in names}
        for r in range(args.rounds):
            for k in range(len(names)):
                n = names[(k + r) % len(names)]
                block = []
                for _ in range(args.block):
                    start = time.perf_counter()
                    paths[n]()
                    block.append((time.perf_counter() - start) * 1000)
                samples[n].extend(block)
                blocks[n].append(statistics.median(block))

    print(f"{args.rounds} rounds of {args.block} searches per path, rotating order; 100 memories, "
          f"limit {LIMIT}; {eb.cpu_model()} ({os.cpu_count()} cores); ms")
    print()
    print("gRPC requests to Qdrant per Cordon search (over 100): "
          + (", ".join(f"{v:g} {k}" for k, v in per_search.items()) or "none counted"))
    print()
    print("| path | p50 | p95 | p99 |")
    print("|---|---:|---:|---:|")
    for n in names:
        s = samples[n]
        print(f"| {n} | {pct(s, .5):.2f} | {pct(s, .95):.2f} | {pct(s, .99):.2f} |")
    cs, ps = blocks[names[0]], blocks[names[1]]
    ce, qq = blocks[names[4]], blocks[names[3]]
    d1 = [a - b for a, b in zip(cs, ps)]
    d2 = [a - b - c for a, b, c in zip(cs, ce, qq)]
    print()
    print("| difference of per-block medians, same round | median | min | max |")
    print("|---|---:|---:|---:|")
    for name, d in (("cordon search - python search", d1),
                    ("cordon search - (cordon embedding + Qdrant query)", d2)):
        print(f"| {name} | {statistics.median(d):+.2f} | {min(d):+.2f} | {max(d):+.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(samples, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
