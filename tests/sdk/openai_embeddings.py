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
import struct

from openai import OpenAI

from cordon_server import CordonServer, check

MODEL = "all-MiniLM-L6-v2"
DIMENSIONS = 384


def cosine(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True, help="the cordon binary")
    parser.add_argument("--model-dir", default="models")
    args = parser.parse_args()

    with CordonServer(args.bin, args.model_dir) as server:
        token = server.token("acme", "sdk-user")
        run_checks(OpenAI(base_url=f"{server.base_url}/v1", api_key=token))


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
