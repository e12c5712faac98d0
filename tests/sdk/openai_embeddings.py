#!/usr/bin/env python3
"""The official `openai` Python package against a real Cordon: embeddings
for a string and a list with the SDK's defaults (which ask for base64) and
with each `encoding_format` it offers.

    tests/sdk/openai_embeddings.py --bin <path to cordon>

Starts `cordon serve` on a free loopback port with a temporary data
directory, mints a token with `cordon token`, checks, stops the server.
Exits non-zero on the first failed check. Run by scripts/sdk-tests.
"""

import argparse
import base64
import math
import os
import secrets
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

from openai import OpenAI

MODEL = "all-MiniLM-L6-v2"
DIMENSIONS = 384


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cosine(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def check(condition: bool, what: str) -> None:
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True, help="the cordon binary")
    parser.add_argument("--model-dir", default="models")
    args = parser.parse_args()

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORDON_")}
    env.update(
        CORDON_BIND=f"127.0.0.1:{port}",
        CORDON_JWT_HS256_SECRET=secrets.token_hex(32),
        CORDON_MODEL_DIR=os.path.abspath(args.model_dir),
        CORDON_MIN_FREE_BYTES="0",
        RUST_LOG="warn",
    )
    with tempfile.TemporaryDirectory() as data:
        env["CORDON_DATA_DIR"] = data
        token = subprocess.run(
            [args.bin, "token", "--tenant", "acme", "--sub", "sdk-user"],
            env=env, check=True, capture_output=True, text=True,
        ).stdout.strip()
        server = subprocess.Popen([args.bin, "serve"], env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(120):
                try:
                    urllib.request.urlopen(f"{base}/readyz", timeout=1)
                    break
                except Exception:
                    if server.poll() is not None:
                        sys.exit(f"cordon exited with {server.returncode}")
                    time.sleep(0.5)
            run_checks(OpenAI(base_url=f"{base}/v1", api_key=token))
        finally:
            server.terminate()
            server.wait(timeout=60)


def run_checks(client: OpenAI) -> None:
    cat, feline = "The cat sits on the mat", "A feline is resting on a rug"

    one = client.embeddings.create(model=MODEL, input=cat)
    vector = one.data[0].embedding
    check(len(one.data) == 1 and len(vector) == DIMENSIONS,
          "default encoding, a string: one vector of 384 floats")

    many = client.embeddings.create(model=MODEL, input=[cat, feline])
    check([d.index for d in many.data] == [0, 1], "default encoding, a list: two vectors in order")
    similarity = cosine(many.data[0].embedding, many.data[1].embedding)
    check(abs(similarity - 0.582) < 0.01,
          f"the model's reference similarity (0.582), got {similarity:.3f}")
    check(cosine(many.data[0].embedding, vector) > 0.999, "the same text gives the same vector")

    floats = client.embeddings.create(model=MODEL, input=[cat], encoding_format="float")
    check(cosine(floats.data[0].embedding, vector) > 0.999, "encoding_format=float")

    packed = client.embeddings.create(model=MODEL, input=[cat, feline], encoding_format="base64")
    raw = base64.b64decode(packed.data[0].embedding)
    decoded = struct.unpack(f"<{DIMENSIONS}f", raw)
    check(cosine(decoded, vector) > 0.999, "encoding_format=base64, decoded as little-endian f32")
    check(packed.usage.total_tokens > 0, "usage is reported")


if __name__ == "__main__":
    main()
