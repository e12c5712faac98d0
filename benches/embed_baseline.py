#!/usr/bin/env python3
"""Embedding throughput: Python onnxruntime baseline against Cordon's /v1/embeddings.

Runs the same model (models/model.onnx, all-MiniLM-L6-v2 int8) with the same
tokenizer (models/tokenizer.json) two ways, on the same machine, in one run:

  * directly in Python with `onnxruntime` + `tokenizers`, doing what Cordon's
    model code does (truncate at 256 tokens, pad to the longest text of the
    batch, mean-pool over the attention mask, L2-normalise). Python's time
    includes tokenisation, inference, pooling and normalisation;
  * through Cordon's HTTP endpoint `POST /v1/embeddings`, which does the same
    work plus HTTP, JWT checking, JSON and its dynamic batching. The client runs
    on the same machine (stdlib http.client, one keep-alive connection per
    client thread, connected before the clock starts), so its JSON decoding
    competes with the server for the same cores, as a co-located agent would.

Rows (each measured once per round; rounds are interleaved and the row order
is rotated every round so that no row always runs first or last):

  1. python onnxruntime, batch 1
  2. python onnxruntime, batch 32
  3. cordon /v1/embeddings, 1 text per request, 1 client
  4. cordon /v1/embeddings, 32 texts per request, 1 client
  5. cordon /v1/embeddings, 1 text per request, 32 concurrent clients

Every row embeds the same --texts deterministic sentences (about 20-25 tokens
each) per round and reports texts/second as median, min and max over the
rounds. Before timing, each row is run once untimed (warm-up), and Python's
and Cordon's vectors for the same 8 texts must agree (cosine >= 0.999 each) or
the script exits non-zero.

Python's ONNX Runtime session is a plain one: intra-op threads = --threads
(default os.cpu_count()), inter-op threads and graph optimisation left at
ORT's defaults (ORT_ENABLE_ALL), on models/model.onnx, the file Cordon's
packed graph is made from. A Cordon started by this script runs with its own
defaults (workers, threads and model file), unless --cordon-threads gives
its CORDON_EMBED_THREADS.

Setup (once; Python 3.11, Linux x86_64). benches/requirements-baseline.txt pins
every package with == and the sha256 of its manylinux x86_64 cp311 wheel, so
pip installs in --require-hashes mode; onnxruntime is 1.31.1, the version
Cordon loads:

    python3 -m venv ~/.cache/cordon/bench-venv
    ~/.cache/cordon/bench-venv/bin/pip install -r benches/requirements-baseline.txt

Build the release binary (from the repository root):

    source scripts/env.sh && cargo build --release --locked --bin cordon

Run, starting a Cordon of its own (release binary under $CARGO_TARGET_DIR,
default ~/.cache/cordon/target) on a free loopback port with a temporary data
directory, stopped and removed at the end:

    ~/.cache/cordon/bench-venv/bin/python benches/embed_baseline.py \\
        --json embed-baseline.json

or against another binary, with smaller settings (a quick check):

    ~/.cache/cordon/bench-venv/bin/python benches/embed_baseline.py \\
        --cordon-bin ~/.cache/cordon/target/debug/cordon --rounds 2 --texts 64

or against a Cordon already running with an HS256 secret (its model directory
must hold the same model; the vector check catches a different one):

    ~/.cache/cordon/bench-venv/bin/python benches/embed_baseline.py \\
        --url 127.0.0.1:8080 --hs256-secret "$CORDON_JWT_HS256_SECRET"

The Markdown table goes to stdout, progress to stderr.
"""

import argparse
import base64
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

try:
    import numpy as np
    import onnxruntime as ort
    import tokenizers
except ImportError as e:
    sys.exit(
        f"embed_baseline: {e}. Run it with the pinned venv:\n"
        "  python3 -m venv ~/.cache/cordon/bench-venv\n"
        "  ~/.cache/cordon/bench-venv/bin/pip install -r benches/requirements-baseline.txt\n"
        "  ~/.cache/cordon/bench-venv/bin/python benches/embed_baseline.py ..."
    )

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Cordon's limits (src/embed/model.rs): inputs longer than this are truncated.
MAX_TOKENS = 256
DIMENSIONS = 384
BATCH = 32
CLIENTS = 32
MIN_COSINE = 0.999

ROW_PY_1 = "python onnxruntime, batch 1"
ROW_PY_32 = "python onnxruntime, batch 32"
ROW_CORDON_1 = "cordon /v1/embeddings, 1 text per request, 1 client"
ROW_CORDON_32 = "cordon /v1/embeddings, 32 texts per request, 1 client"
ROW_CORDON_CONC = "cordon /v1/embeddings, 1 text per request, 32 concurrent clients"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- texts

SUBJECTS = [
    "My sister", "The new intern", "Our landlord", "A retired engineer",
    "The project manager", "Grandpa", "The night-shift nurse", "My running partner",
    "The bakery owner", "Our youngest daughter", "The visiting professor",
    "A quiet neighbour", "The team lead", "My oldest friend", "The delivery driver",
]
VERBS = [
    "prefers", "keeps forgetting", "recommended", "is allergic to", "spent the weekend fixing",
    "wants to learn about", "complained about", "borrowed", "carefully repainted",
    "has been collecting", "wrote a long review of", "finally returned",
]
OBJECTS = [
    "the vintage bicycle", "spicy Thai noodles", "an old cello from an auction",
    "the quarterly migration plan", "black coffee with no sugar",
    "a history of the Hanseatic League", "the broken dishwasher", "window seats on flights",
    "a sourdough starter", "the garden shed", "noise-cancelling headphones",
    "a map of the hiking trails",
]
WHEN = [
    "every Tuesday morning", "before the holidays", "since last spring",
    "after the long meeting", "during the thunderstorm", "on rainy weekends",
    "twice a month", "right before the deadline", "late at night",
]
WHY = [
    "because it reminds them of home", "so please remember that",
    "which surprised everyone", "according to the calendar",
    "and nobody knows why", "despite the doctor's advice",
    "to save some money", "as mentioned yesterday",
]


def make_texts(n: int, seed: int = 20240611) -> list:
    """Deterministic, varied sentences; the same list for every row and round."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} "
        f"{rng.choice(WHEN)}, {rng.choice(WHY)}."
        for _ in range(n)
    ]


# ---------------------------------------------------------------- python baseline

class PythonEmbedder:
    """The same pipeline as Cordon's src/embed/model.rs, in Python."""

    def __init__(self, model_dir: str, threads: int):
        self.tokenizer = tokenizers.Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        # tokenizer.json ships with truncation at 128 and fixed padding to 128;
        # Cordon replaces both (256 tokens, pad to the batch's longest), and so
        # must we, or batch 1 would run 128-token sequences.
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        pad_id = self.tokenizer.token_to_id("[PAD]")
        self.tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        # Graph optimisation level and inter-op threads are left at ORT's
        # defaults: Python's default level is ORT_ENABLE_ALL, which is the level
        # Cordon sets explicitly (GraphOptimizationLevel::Level3), and Cordon
        # leaves inter-op threads at the default too.
        self.session = ort.InferenceSession(
            os.path.join(model_dir, "model.onnx"), sess_options=opts,
            providers=["CPUExecutionProvider"],
        )

    def token_counts(self, texts: list) -> list:
        return [sum(e.attention_mask) for e in self.tokenizer.encode_batch(texts)]

    def embed(self, texts: list) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        # Cordon feeds zeros as token types (single sentences only).
        types = np.zeros_like(ids)
        (hidden,) = self.session.run(
            ["last_hidden_state"],
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": types},
        )
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled / norms


# ---------------------------------------------------------------- cordon client

def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_token(key: str, tenant: str, sub: str, ttl: int = 6 * 3600) -> str:
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    now = int(time.time())
    claims = b64(json.dumps({"sub": sub, "tenant": tenant, "iat": now, "exp": now + ttl}).encode())
    signing_input = f"{header}.{claims}".encode()
    sig = hmac.new(key.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{claims}.{b64(sig)}"


class CordonClient:
    """One keep-alive connection; `connect()` it before the clock starts."""

    def __init__(self, host: str, port: int, token: str):
        self.conn = http.client.HTTPConnection(host, port, timeout=300)
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
        }

    def connect(self) -> None:
        self.conn.connect()
        # Small requests and responses: don't let Nagle hold them back.
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        self.conn.close()

    def embed(self, texts: list) -> list:
        body = json.dumps({"input": texts[0] if len(texts) == 1 else texts})
        self.conn.request("POST", "/v1/embeddings", body=body, headers=self.headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"/v1/embeddings answered {resp.status}: {raw[:500]!r}")
        data = json.loads(raw)["data"]
        if len(data) != len(texts):
            raise RuntimeError(f"/v1/embeddings returned {len(data)} vectors for {len(texts)} texts")
        data.sort(key=lambda d: d["index"])
        return [d["embedding"] for d in data]


def http_status(host: str, port: int, path: str) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CordonServer:
    """A Cordon started for this run: own port, temp data dir, stopped on exit."""

    def __init__(self, binary: str, model_dir: str, threads=None):
        self.binary = binary
        # The server runs from the repository root: pass an absolute path.
        self.model_dir = os.path.abspath(model_dir)
        self.threads = threads
        self.host = "127.0.0.1"
        self.port = free_port()
        self.secret = secrets.token_hex(32)
        self.proc = None
        self.tmp = None

    def __enter__(self):
        self.tmp = tempfile.mkdtemp(prefix="cordon-embed-bench-")
        env = dict(os.environ)
        env.update({
            "CORDON_BIND": f"{self.host}:{self.port}",
            "CORDON_DATA_DIR": os.path.join(self.tmp, "data"),
            "CORDON_MODEL_DIR": self.model_dir,
            "CORDON_JWT_HS256_SECRET": self.secret,
            "CORDON_SERVER_SECRET": secrets.token_hex(32),
            # Per-request logging would be measured as server work.
            "RUST_LOG": "warn",
        })
        if self.threads is not None:
            env["CORDON_EMBED_THREADS"] = str(self.threads)
        self.log_path = os.path.join(self.tmp, "cordon.log")
        self.log_file = open(self.log_path, "wb")
        # Own session: a Ctrl-C reaches only this script, which then stops the
        # server in order instead of racing it.
        self.proc = subprocess.Popen(
            [self.binary, "serve"], env=env, cwd=ROOT,
            stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"cordon exited with {self.proc.returncode} before it was ready:\n{self.log_tail()}")
            try:
                if http_status(self.host, self.port, "/readyz") == 200:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"cordon not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
        except OSError:
            return "(no log)"

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log("cordon did not stop within 30 s of SIGTERM; killing it")
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log_file", None):
            self.log_file.close()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            log("cordon stopped, its temporary directory removed")
        return False


# ---------------------------------------------------------------- rows

def chunks(items: list, size: int) -> list:
    return [items[i:i + size] for i in range(0, len(items), size)]


def timed(fn, texts: list) -> float:
    """texts/second of one pass of `fn` over `texts`."""
    start = time.perf_counter()
    fn(texts)
    return len(texts) / (time.perf_counter() - start)


def make_rows(py: PythonEmbedder, host: str, port: int, token: str) -> list:
    def py_batch1(texts):
        for t in texts:
            py.embed([t])

    def py_batch32(texts):
        for c in chunks(texts, BATCH):
            py.embed(c)

    def cordon_sequential(size):
        def run(texts):
            client = CordonClient(host, port, token)
            client.connect()
            try:
                # The clock starts here, after the connection is up.
                start = time.perf_counter()
                for c in chunks(texts, size):
                    client.embed(c)
                return len(texts) / (time.perf_counter() - start)
            finally:
                client.close()
        return run

    def cordon_concurrent(texts):
        shares = [texts[i::CLIENTS] for i in range(CLIENTS)]
        clients = [CordonClient(host, port, token) for _ in shares]
        for c in clients:
            c.connect()
        # Every thread is started and waiting before the clock starts, so
        # thread start-up is not measured either.
        gate = threading.Barrier(len(clients) + 1)
        errors = []

        def worker(client, share):
            gate.wait()
            try:
                for t in share:
                    client.embed([t])
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(c, s), daemon=True)
                   for c, s in zip(clients, shares)]
        for t in threads:
            t.start()
        try:
            gate.wait()
            start = time.perf_counter()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - start
        finally:
            for c in clients:
                c.close()
        if errors:
            raise errors[0]
        return len(texts) / elapsed

    # Python rows are timed around the whole call; Cordon rows time themselves
    # so that connection setup stays outside the clock.
    return [
        (ROW_PY_1, lambda texts: timed(py_batch1, texts)),
        (ROW_PY_32, lambda texts: timed(py_batch32, texts)),
        (ROW_CORDON_1, cordon_sequential(1)),
        (ROW_CORDON_32, cordon_sequential(BATCH)),
        (ROW_CORDON_CONC, cordon_concurrent),
    ]


# ---------------------------------------------------------------- checks and report

def cosine(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def check_vectors(py: PythonEmbedder, host: str, port: int, token: str, texts: list) -> list:
    mine = py.embed(texts)
    client = CordonClient(host, port, token)
    client.connect()
    try:
        theirs = client.embed(texts)
    finally:
        client.close()
    bad = [len(v) for v in theirs if len(v) != DIMENSIONS]
    if bad:
        sys.exit(f"embed_baseline: Cordon returned vectors of {bad[0]} dimensions, expected {DIMENSIONS}")
    cosines = [cosine(a, b) for a, b in zip(mine, theirs)]
    for i, c in enumerate(cosines):
        if c < MIN_COSINE:
            sys.exit(
                f"embed_baseline: Python and Cordon disagree on text {i} ({texts[i]!r}): "
                f"cosine {c:.6f} < {MIN_COSINE}. Not the same model, tokenizer or pipeline; "
                "no figures reported.")
    return cosines


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown(results: list, rounds: int) -> str:
    out = ["| row | median texts/s | min | max | rounds |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in results:
        out.append(f"| {r['row']} | {r['median']:.1f} | {r['min']:.1f} | {r['max']:.1f} | {rounds} |")
    return "\n".join(out)


def parse_url(url: str):
    # Accept "host:port" or a full http base; only plain HTTP is supported
    # because the client is stdlib http.client without TLS set-up.
    parts = urllib.parse.urlsplit(url if "//" in url else "//" + url)
    if parts.scheme not in ("", "http"):
        sys.exit(f"embed_baseline: --url must be plain http, got {url!r}")
    if not parts.hostname or not parts.port:
        sys.exit(f"embed_baseline: --url needs a host and a port, got {url!r}")
    return parts.hostname, parts.port


def main() -> int:
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/cordon/target"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cordon-bin", default=os.path.join(target, "release", "cordon"),
                    help="Cordon binary to start (default: $CARGO_TARGET_DIR/release/cordon)")
    ap.add_argument("--url", help="use an already running Cordon at this host:port instead")
    ap.add_argument("--hs256-secret", help="the running Cordon's HS256 JWT secret (with --url)")
    ap.add_argument("--model-dir", default=os.path.join(ROOT, "models"),
                    help="model.onnx and tokenizer.json, for Python and a started Cordon")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--texts", type=int, default=256, help="texts per measurement")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="Python onnxruntime's intra-op threads (default: os.cpu_count())")
    ap.add_argument("--cordon-threads", type=int,
                    help="CORDON_EMBED_THREADS for a started Cordon (default: its own)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    args = ap.parse_args()
    if args.url and not args.hs256_secret:
        ap.error("--url needs --hs256-secret")
    if args.rounds < 1 or args.texts < 1 or args.threads < 1:
        ap.error("--rounds, --texts and --threads must be at least 1")
    if not args.url and not os.access(args.cordon_bin, os.X_OK):
        ap.error(f"no Cordon binary at {args.cordon_bin}; build it with "
                 "`source scripts/env.sh && cargo build --release --locked --bin cordon` "
                 "or pass --cordon-bin (or --url)")

    # SIGTERM should unwind like Ctrl-C does, so the started Cordon is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    texts = make_texts(args.texts)
    check_texts = make_texts(8, seed=7)
    log(f"loading the Python model ({args.threads} intra-op threads)")
    py = PythonEmbedder(args.model_dir, args.threads)
    counts = py.token_counts(texts)
    log(f"{len(texts)} texts, tokens each (with [CLS]/[SEP]): mean {statistics.mean(counts):.1f}, "
        f"min {min(counts)}, max {max(counts)}")

    if args.url:
        host, port = parse_url(args.url)
        cordon_desc = {"url": args.url}
    else:
        cordon_desc = {"binary": os.path.abspath(args.cordon_bin)}

    with contextlib.ExitStack() as stack:
        if args.url:
            secret = args.hs256_secret
        else:
            log(f"starting {args.cordon_bin}")
            server = stack.enter_context(CordonServer(args.cordon_bin, args.model_dir, args.cordon_threads))
            host, port, secret = server.host, server.port, server.secret
            log(f"cordon ready on port {port}")
        token = hs256_token(secret, "bench", "embed-baseline")

        cat = py.embed(["The cat sits on the mat", "A feline is resting on a rug"])
        cat_cos = cosine(cat[0], cat[1])
        log(f'python cos("The cat sits on the mat", "A feline is resting on a rug") = '
            f"{cat_cos:.4f} (expected about 0.582)")

        cosines = check_vectors(py, host, port, token, check_texts)
        log(f"vector check: Python and Cordon agree on {len(cosines)} texts, "
            f"min cosine {min(cosines):.6f}")

        rows = make_rows(py, host, port, token)
        warm = texts[:min(len(texts), 2 * CLIENTS)]
        for name, fn in rows:
            log(f"warm-up: {name}")
            fn(warm)

        samples = {name: [] for name, _ in rows}
        for r in range(args.rounds):
            k = r % len(rows)
            for name, fn in rows[k:] + rows[:k]:
                rate = fn(texts)
                samples[name].append(rate)
                log(f"round {r + 1}/{args.rounds}: {name}: {rate:.1f} texts/s")

    results = [{
        "row": name,
        "median": statistics.median(v),
        "min": min(v),
        "max": max(v),
        "rounds": len(v),
        "samples": v,
    } for name, v in samples.items()]
    med = {r["row"]: r["median"] for r in results}
    ratios = {
        "cordon_over_python_batch1": med[ROW_CORDON_1] / med[ROW_PY_1],
        "cordon_over_python_batch32": med[ROW_CORDON_32] / med[ROW_PY_32],
    }

    print(f"Embedding throughput, {args.texts} texts per measurement "
          f"(mean {statistics.mean(counts):.1f} tokens), {args.rounds} rounds, "
          f"ORT intra-op threads {args.threads}, {cpu_model()} ({os.cpu_count()} cores)")
    print(f"Cordon: {cordon_desc.get('binary') or cordon_desc.get('url')}")
    print()
    print(markdown(results, args.rounds))
    print()
    print(f"Cordon / Python at batch 1 (1 text per request, 1 client): "
          f"{ratios['cordon_over_python_batch1']:.2f}")
    print(f"Cordon / Python at batch 32 (32 texts per request, 1 client): "
          f"{ratios['cordon_over_python_batch32']:.2f}")
    print(f"Checks: Python vs Cordon min cosine {min(cosines):.6f} over {len(cosines)} texts; "
          f'Python cos("The cat sits on the mat", "A feline is resting on a rug") = {cat_cos:.4f}')

    if args.json:
        report = {
            "benchmark": "embed_baseline",
            "settings": {
                "texts": args.texts,
                "rounds": args.rounds,
                "ort_intra_op_threads": args.threads,
                "batch": BATCH,
                "clients": CLIENTS,
                "tokens_mean": statistics.mean(counts),
                "tokens_min": min(counts),
                "tokens_max": max(counts),
            },
            "cordon": cordon_desc,
            "rows": results,
            "ratios": ratios,
            "checks": {
                "min_cosine_python_vs_cordon": min(cosines),
                "cosine_cat_feline_python": cat_cos,
            },
            "machine": {
                "cpu_model": cpu_model(),
                "cores": os.cpu_count(),
                "python": platform.python_version(),
                "onnxruntime": ort.__version__,
                "tokenizers": tokenizers.__version__,
                "numpy": np.__version__,
            },
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("embed_baseline: interrupted")
    except (RuntimeError, OSError) as e:
        # Server start-up and HTTP failures: the message says enough.
        sys.exit(f"embed_baseline: {e}")
