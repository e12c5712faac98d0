#!/usr/bin/env python3
"""How one model call's time grows with the texts in it: Python onnxruntime
with Cordon's model file and tokenizer (models/), at batch 1 to 32, texts of
about 20 tokens (the load tool's flooder text).

    ~/.cache/cordon/bench-venv/bin/python benches/batch_time.py [--threads 2] [--repeat 30]

Uses the environment of benches/requirements-baseline.txt (see
embed_baseline.py). Prints the mean time of one call and texts per second for
each batch size; the figures behind the fair-share scheduling in RESULTS.md.
"""

import argparse
import os
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()

    tokenizer = Tokenizer.from_file(os.path.join(ROOT, "models", "tokenizer.json"))
    tokenizer.enable_truncation(256)
    tokenizer.enable_padding()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(os.path.join(ROOT, "models", "model.onnx"), options)

    def run(texts):
        encoded = tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        session.run(None, {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": np.zeros_like(ids),
        })

    for n in [1, 2, 4, 8, 12, 16, 24, 32]:
        texts = [f"flood 3-{i}-{i}: a note about nothing in particular, written again and again"
                 for i in range(n)]
        run(texts)
        start = time.perf_counter()
        for _ in range(args.repeat):
            run(texts)
        took = (time.perf_counter() - start) / args.repeat
        print(f"batch {n:3d}: {took * 1000:7.2f} ms  {n / took:7.1f} texts/s")


if __name__ == "__main__":
    main()
