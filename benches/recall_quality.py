#!/usr/bin/env python3
"""Retrieval quality: recall@1/5/10 and MRR of each search mode on the
labelled agent-memory fixture, per question kind, with each mode's latency.

Stores every memory of benches/recall/fixture.json (LongMemEval question
schema; see benches/recall/make_fixture.py) for one user, then asks each
question in each mode (`semantic`, `keyword`, `hybrid`) for the top 10.
A question is answered at k when one of the memories labelled as its answer
is among the first k results (LongMemEval's recall_any); MRR is the mean of
1/rank of the first such memory (0 when none is in the top 10). Latency is
each search's round trip over loopback HTTP, p50 and p99 per mode.

    python3 benches/recall_quality.py edge
    python3 benches/recall_quality.py qdrant      # its own Qdrant from QDRANT_BIN

Prints a JSON object; --json writes it, --markdown writes the tables.
Python standard library only; Cordon is the release build unless
--cordon-bin says otherwise.
"""

import argparse
import json
import os
import tempfile
import time

from benchlib import call, free_port, hs256_token, server_env
from tier_restart import ROOT, Cordon, Qdrant, pct

FIXTURE = os.path.join(ROOT, "benches", "recall", "fixture.json")
MODES = ["semantic", "keyword", "hybrid"]
KS = [1, 5, 10]


def store_all(cordon, token, sessions):
    """Stores each session's user turn; the memory id of each session."""
    ids = {}
    for start in range(0, len(sessions), 64):
        batch = sessions[start:start + 64]
        body = {"memories": [{"text": s["turns"][0]["content"],
                              "metadata": {"session_id": s["session_id"]}} for s in batch]}
        _, answer = call("POST", f"{cordon.url}/v1/memories", token, body)
        for session, memory_id in zip(batch, answer["ids"]):
            ids[memory_id] = session["session_id"]
    return ids


def evaluate(cordon, token, questions, sessions_of, mode):
    """Per question: the rank (1-based) of its first answer memory, or None,
    and the search's latency in ms."""
    ranks, latencies = [], []
    for q in questions:
        body = {"query": q["question"], "limit": 10, "mode": mode}
        start = time.perf_counter()
        _, answer = call("POST", f"{cordon.url}/v1/memories/search", token, body)
        latencies.append((time.perf_counter() - start) * 1000)
        found = [sessions_of.get(m["id"]) for m in answer["results"]]
        wanted = set(q["answer_session_ids"])
        rank = next((i + 1 for i, sid in enumerate(found) if sid in wanted), None)
        ranks.append(rank)
    return ranks, latencies


def scores(ranks):
    n = len(ranks) or 1
    out = {f"recall@{k}": round(sum(1 for r in ranks if r and r <= k) / n, 3) for k in KS}
    out["mrr"] = round(sum(1 / r for r in ranks if r) / n, 3)
    out["questions"] = len(ranks)
    return out


def markdown(result):
    lines = [f"Engine `{result['engine']}`, {result['memories']} memories, "
             f"{result['questions']} questions.", "",
             "| mode | recall@1 | recall@5 | recall@10 | MRR | search p50 ms | search p99 ms |",
             "|---|---|---|---|---|---|---|"]
    for mode in MODES:
        m = result["modes"][mode]
        a = m["all"]
        lines.append(f"| {mode} | {a['recall@1']} | {a['recall@5']} | {a['recall@10']} | {a['mrr']} "
                     f"| {m['latency_ms']['p50']} | {m['latency_ms']['p99']} |")
    lines += ["", "| question kind (count) | " + " | ".join(f"{m} R@1 / R@10 / MRR" for m in MODES) + " |",
              "|---|" + "---|" * len(MODES)]
    kinds = sorted(result["modes"]["semantic"]["by_kind"])
    for kind in kinds:
        n = result["modes"]["semantic"]["by_kind"][kind]["questions"]
        cells = []
        for mode in MODES:
            k = result["modes"][mode]["by_kind"][kind]
            cells.append(f"{k['recall@1']} / {k['recall@10']} / {k['mrr']}")
        lines.append(f"| {kind} ({n}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine", choices=["edge", "qdrant"])
    ap.add_argument("--qdrant-bin", default=os.environ.get("QDRANT_BIN", "/opt/qdrant/qdrant"))
    ap.add_argument("--cordon-bin", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "cordon"))
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args()

    with open(FIXTURE) as f:
        fixture = json.load(f)
    work = tempfile.mkdtemp(prefix="cordon-recall-")
    key = os.urandom(32).hex()
    extra = {}
    qdrant = None
    if args.engine == "qdrant":
        qdrant = Qdrant(args.qdrant_bin, work)
        qdrant.start()
        extra.update({"CORDON_STORE": "qdrant", "CORDON_QDRANT_URL": f"http://127.0.0.1:{qdrant.grpc}"})
    port = free_port()
    env = server_env(os.environ, os.path.join(work, "data"), os.path.join(ROOT, "models"), key, port, **extra)
    cordon = Cordon(args.cordon_bin, env, port, os.path.join(work, "cordon.log"))
    try:
        cordon.start()
        token = hs256_token(key, "bench", "recall-user")
        sessions_of = store_all(cordon, token, fixture["sessions"])
        questions = fixture["questions"]
        result = {"engine": args.engine, "memories": len(sessions_of), "questions": len(questions),
                  "modes": {}}
        # One unmeasured pass warms the model and the engine's caches.
        evaluate(cordon, token, questions[:20], sessions_of, "hybrid")
        for mode in MODES:
            ranks, latencies = evaluate(cordon, token, questions, sessions_of, mode)
            by_kind = {}
            for q, r in zip(questions, ranks):
                by_kind.setdefault(q["question_type"], []).append(r)
            result["modes"][mode] = {
                "all": scores(ranks),
                "by_kind": {kind: scores(rs) for kind, rs in sorted(by_kind.items())},
                "latency_ms": {"p50": round(pct(latencies, 50), 1), "p99": round(pct(latencies, 99), 1)},
            }
    finally:
        cordon.stop()
        if qdrant:
            qdrant.stop()
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
