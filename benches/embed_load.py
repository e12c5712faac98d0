#!/usr/bin/env python3
"""Texts per second through /v1/embeddings and through store, by concurrent
single-text clients, against Python onnxruntime, with a lone search's
latency under each load; one or more Cordon builds side by side in one run.

    ~/.cache/cordon/bench-venv/bin/python benches/embed_load.py \\
        --cordon-bin OLD --cordon-bin NEW [--clients 1,4,16,64] [--rounds 3] \\
        [--texts 256] [--encoding base64] [--kinds embed,store] [--json out.json]

Rows, each measured once per round, rounds interleaved and rotated:

  * python onnxruntime, batch 1 and batch 32 (benches/embed_baseline.py's
    PythonEmbedder: same model file, tokenizer and pipeline);
  * python onnxruntime on Cordon's packed graph (models/model-packed.onnx,
    basic optimisation level, as Cordon runs it), at each batch size of
    --packed-batches: the model's own rate at the batches Cordon forms,
    with no client and no server on the machine;
  * per Cordon binary and per N in --clients: N clients, each its own user
    on its own keep-alive connection, sending one text per request to
    POST /v1/embeddings, then the same to POST /v1/memories (store);
  * with `--kinds wrk`, the same as `embed` driven by wrk (the Debian
    package of that name; one thread, N connections, --wrk-seconds long)
    instead of Python threads: a light C client, whose own work takes
    little of the cores the server runs on. The texts are the same, and
    each request carries the token of one of N users, in turn;
  * with `--kinds long`, the same as `embed` with long texts (twelve
    sentences, cut at the 256-token limit), an eighth as many per
    measurement: a load of long documents, under which a lone search
    should still not wait long. Their ratio to Python is left blank (Python
    embeds the short texts).

While a Cordon row runs, one more user searches every 100 ms, one query at
a time (POST /v1/memories/search over 100 stored memories), as a lone agent
would; its p50 and p99 over all rounds are reported with the row. The clients ask for `encoding_format` --encoding
(base64, the official OpenAI SDKs' default, unless told otherwise).

Before timing, 240 varied texts (one word to several sentences, past the
256-token limit) are embedded by every binary: the minimum cosine of each
binary's vectors against the first binary's, and against Python's, is
reported (a build that changed the vectors shows here).
"""

import argparse
import base64
import contextlib
import http.client
import importlib.util
import json
import os
import random
import signal
import socket
import re
import statistics
import struct
import subprocess
import tempfile
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("embed_baseline", os.path.join(HERE, "embed_baseline.py"))
eb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eb)

np = eb.np
PROBE_QUERY = "what does my sister like to drink"
PROBE_EVERY = 0.1


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def varied_texts(n: int = 240, seed: int = 99) -> list:
    """Short, medium and long texts (some past the 256-token limit)."""
    rng = random.Random(seed)
    base = eb.make_texts(400, seed=seed)
    out = []
    for i in range(n):
        kind = i % 6
        if kind == 0:
            out.append(rng.choice(["coffee", "Maya", "peanuts", "9:30", "Thai food", "bikes"]))
        elif kind in (1, 2):
            out.append(base[i])
        elif kind == 3:
            out.append(" ".join(base[i:i + 3]))
        elif kind == 4:
            out.append(" ".join(base[i:i + 12]))
        else:
            out.append(" ".join(base[i:i + 40]))
    return out


class PackedEmbedder:
    """The packed graph driven from Python as src/embed/model.rs drives it:
    real tokens only, end to end, with the index inputs attention needs."""

    def __init__(self, model_dir: str, threads: int):
        self.tokenizer = eb.tokenizers.Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=eb.MAX_TOKENS)
        self.tokenizer.no_padding()
        opts = eb.ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = eb.ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self.session = eb.ort.InferenceSession(
            os.path.join(model_dir, "model-packed.onnx"), sess_options=opts,
            providers=["CPUExecutionProvider"])

    def embed(self, texts: list):
        seqs = [e.ids for e in self.tokenizer.encode_batch(texts)]
        lengths = [len(s) for s in seqs]
        batch, longest, total = len(seqs), max(lengths), sum(lengths)
        # Padding slots point at row `total`, the zero row the graph appends.
        unpad = np.full((batch, longest), total, dtype=np.int64)
        pack = np.empty(total, dtype=np.int64)
        row = 0
        for b, n in enumerate(lengths):
            unpad[b, :n] = np.arange(row, row + n)
            pack[row:row + n] = b * longest + np.arange(n)
            row += n
        (states,) = self.session.run(["token_states"], {
            "input_ids": np.concatenate([np.array(s, dtype=np.int64) for s in seqs]),
            "position_ids": np.concatenate([np.arange(n, dtype=np.int64) for n in lengths]),
            "lengths": np.array(lengths, dtype=np.int32),
            "unpad_index": unpad,
            "pack_index": pack,
        })
        pooled = np.stack([part.mean(axis=0) for part in np.split(states, np.cumsum(lengths)[:-1])])
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


class Client:
    """One keep-alive connection for one user."""

    def __init__(self, host, port, token, encoding):
        self.conn = http.client.HTTPConnection(host, port, timeout=300)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.encoding = encoding

    def connect(self):
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self):
        self.conn.close()

    def post(self, path, body):
        self.conn.request("POST", path, body=json.dumps(body), headers=self.headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        if resp.status not in (200, 201):
            raise RuntimeError(f"{path} answered {resp.status}: {raw[:300]!r}")
        return raw

    def embed(self, texts):
        raw = self.post("/v1/embeddings", {"input": texts, "encoding_format": self.encoding})
        data = sorted(json.loads(raw)["data"], key=lambda d: d["index"])
        if self.encoding == "base64":
            return [struct.unpack(f"<{eb.DIMENSIONS}f", base64.b64decode(d["embedding"])) for d in data]
        return [d["embedding"] for d in data]

    def store(self, text):
        self.post("/v1/memories", {"text": text})

    def search(self, query):
        self.post("/v1/memories/search", {"query": query, "limit": 10})


def percentile(values, q):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Target:
    """One running Cordon and its users."""

    def __init__(self, stack, binary, model_dir, threads, encoding):
        self.binary = binary
        server = stack.enter_context(eb.CordonServer(binary, model_dir, threads))
        self.host, self.port, self.secret = server.host, server.port, server.secret
        self.encoding = encoding
        prober = self.client("prober")
        prober.connect()
        for i in range(0, 100, 50):
            prober.post("/v1/memories", {"memories": [
                {"text": f"memory {j}: my sister prefers oat milk in coffee and books Thai food on Fridays"}
                for j in range(i, i + 50)]})
        prober.close()

    def client(self, user):
        return Client(self.host, self.port, eb.hs256_token(self.secret, "bench", user), self.encoding)

    def wrk(self, clients, texts, seconds):
        """Requests per second of wrk with `clients` connections."""
        tokens = [eb.hs256_token(self.secret, "bench", f"wrk-{clients}-{i}") for i in range(clients)]
        bodies = [json.dumps({"input": t, "encoding_format": self.encoding}) for t in texts]
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write("local bodies = {" + ",".join(f"[==[{b}]==]" for b in bodies) + "}\n")
            f.write("local tokens = {" + ",".join(f'"{t}"' for t in tokens) + "}\n")
            f.write("local i = 0\n"
                    "request = function()\n"
                    "  i = i + 1\n"
                    "  return wrk.format('POST', '/v1/embeddings', {['Content-Type'] = 'application/json',\n"
                    "    ['Authorization'] = 'Bearer ' .. tokens[(i % #tokens) + 1]}, bodies[(i % #bodies) + 1])\n"
                    "end\n")
            script = f.name
        try:
            # A long --timeout: wrk's own 2 s would count slow answers under
            # 64 connections as errors.
            out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "60s",
                                  "-s", script,
                                  f"http://{self.host}:{self.port}"],
                                 capture_output=True, text=True, check=True).stdout
        finally:
            os.unlink(script)
        if "Non-2xx" in out or "Socket errors" in out:
            raise RuntimeError(f"wrk saw failed requests:\n{out}")
        return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def row(self, kind, clients, texts, wrk_seconds=10):
        """(texts/s, probe p50 ms, probe p99 ms) for one run of `clients`."""
        # wrk opens its own connections; Python threads drive the others.
        threaded = 0 if kind == "wrk" else clients
        shares = [texts[i::clients] for i in range(threaded)]
        workers = [self.client(f"{kind}-{clients}-{i}") for i in range(threaded)]
        prober = self.client("prober")
        for c in workers + [prober]:
            c.connect()
        gate = threading.Barrier(threaded + 2)
        done = threading.Event()
        errors, probes = [], []

        def work(client, share):
            gate.wait()
            try:
                for t in share:
                    if kind in ("embed", "long"):
                        client.embed([t])
                    else:
                        client.store(t)
            except BaseException as e:
                errors.append(e)

        def probe():
            gate.wait()
            try:
                while not done.is_set():
                    start = time.perf_counter()
                    prober.search(PROBE_QUERY)
                    took = time.perf_counter() - start
                    probes.append(took * 1000)
                    done.wait(max(0.0, PROBE_EVERY - took))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work, args=(c, s), daemon=True) for c, s in zip(workers, shares)]
        probe_thread = threading.Thread(target=probe, daemon=True)
        for t in threads + [probe_thread]:
            t.start()
        gate.wait()
        start = time.perf_counter()
        if kind == "wrk":
            try:
                rate = self.wrk(clients, texts, wrk_seconds)
            except BaseException as e:
                errors.append(e)
                rate = 0.0
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        done.set()
        probe_thread.join()
        for c in workers + [prober]:
            c.close()
        if errors:
            raise errors[0]
        if kind == "wrk":
            return rate, probes
        return len(texts) / elapsed, probes


def main() -> int:
    target_dir = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/cordon/target"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cordon-bin", action="append",
                    help="a Cordon binary (repeat for side by side; default: the release build)")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--kinds", default="embed,store", help="rows to run: embed, store or both")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="Python onnxruntime's intra-op threads")
    ap.add_argument("--cordon-threads", type=int,
                    help="CORDON_EMBED_THREADS for the Cordons started (default: their own)")
    ap.add_argument("--encoding", choices=["float", "base64"], default="base64")
    ap.add_argument("--wrk-seconds", type=int, default=10, help="length of each wrk row")
    ap.add_argument("--packed-batches", default="8,16",
                    help="batch sizes of the Python rows on the packed graph ('' for none)")
    ap.add_argument("--model-dir", default=os.path.join(eb.ROOT, "models"))
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    binaries = args.cordon_bin or [os.path.join(target_dir, "release", "cordon")]
    counts = [int(c) for c in args.clients.split(",")]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    texts = eb.make_texts(args.texts)
    base = eb.make_texts(args.texts + 12, seed=7)
    long_texts = [" ".join(base[i:i + 12]) for i in range(max(1, args.texts // 8))]
    py = eb.PythonEmbedder(args.model_dir, args.threads)
    packed_sizes = [int(b) for b in args.packed_batches.split(",") if b]
    packed = PackedEmbedder(args.model_dir, args.threads) if packed_sizes else None
    varied = varied_texts()
    with contextlib.ExitStack() as stack:
        targets = []
        for b in binaries:
            log(f"starting {b}")
            targets.append(Target(stack, b, args.model_dir, args.cordon_threads, args.encoding))

        reference = py.embed(varied)
        if packed is not None:
            mine = np.concatenate([packed.embed(varied[i:i + 16]) for i in range(0, len(varied), 16)])
            worst = float(np.min(np.sum(mine * reference, axis=1)))
            log(f"python on the packed graph against the plain export: min cosine {worst:.6f}")
            if worst < 0.999:
                sys.exit(f"the packed graph's Python rows disagree with the plain export ({worst})")
        first = None
        drift = []
        for t in targets:
            client = t.client("drift")
            client.connect()
            vectors = np.array([v for i in range(0, len(varied), 16) for v in client.embed(varied[i:i + 16])])
            client.close()
            if first is None:
                first = vectors
            drift.append({
                "binary": t.binary,
                "min_cosine_vs_first": float(np.min(np.sum(vectors * first, axis=1))),
                "min_cosine_vs_python": float(np.min(np.sum(vectors * reference, axis=1))),
            })
            log(f"vectors of {t.binary}: {drift[-1]}")

        rows = [("python onnxruntime, batch 1", None, None, None),
                ("python onnxruntime, batch 32", None, None, None)]
        rows += [(f"python onnxruntime, packed graph, batch {b}", None, None, None)
                 for b in packed_sizes]
        for i, t in enumerate(targets):
            for kind in args.kinds.split(","):
                for n in counts:
                    rows.append((f"[{i + 1}] {kind}, {n} clients", t, kind, n))

        def run(row, sample):
            name, t, kind, n = row
            if t is None:
                size = int(name.rsplit(" ", 1)[1])
                model = packed if "packed graph" in name else py
                start = time.perf_counter()
                for j in range(0, len(sample), size):
                    model.embed(sample[j:j + size])
                return len(sample) / (time.perf_counter() - start), []
            if kind == "long":
                # An eighth as many long texts as short ones would take.
                sample = long_texts[: max(1, len(sample) // 8)]
            return t.row(kind, n, sample, args.wrk_seconds)

        for row in rows:
            log(f"warm-up: {row[0]}")
            run(row, texts[:64])
        samples = {row[0]: [] for row in rows}
        for r in range(args.rounds):
            k = (r * 3) % len(rows)
            for row in rows[k:] + rows[:k]:
                result = run(row, texts)
                samples[row[0]].append(result)
                log(f"round {r + 1}/{args.rounds}: {row[0]}: {result[0]:.1f} texts/s")

    py32 = statistics.median(s[0] for s in samples["python onnxruntime, batch 32"])
    print(f"{args.texts} texts per measurement, {args.rounds} rounds, Python {args.threads} intra-op threads, "
          f"encoding_format {args.encoding}, {eb.cpu_model()} ({os.cpu_count()} cores)")
    for i, b in enumerate(binaries):
        print(f"[{i + 1}] {b}")
    print()
    print("| row | median texts/s | min | max | / python batch 32 | lone search p50 ms | p99 ms (searches) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    report = []
    for name, values in samples.items():
        rates = [v[0] for v in values]
        probes = [p for v in values for p in v[1]]
        med = statistics.median(rates)
        ratio = "" if "] long, " in name else f"{med / py32:.2f}"
        cells = [f"{med:.1f}", f"{min(rates):.1f}", f"{max(rates):.1f}", ratio,
                 f"{percentile(probes, 0.5):.1f}" if probes else "",
                 f"{percentile(probes, 0.99):.1f} ({len(probes)})" if probes else ""]
        print(f"| {name} | " + " | ".join(cells) + " |")
        report.append({"row": name, "rates": rates, "probes_ms": probes})
    print()
    for d in drift:
        print(f"vectors: {d['binary']}: min cosine {d['min_cosine_vs_first']:.6f} against [1], "
              f"{d['min_cosine_vs_python']:.6f} against Python, over {len(varied)} varied texts")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": report, "drift": drift, "binaries": binaries}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
