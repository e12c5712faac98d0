#!/usr/bin/env python3
"""Tables for benches/RESULTS.md from the files benches/run-all.sh writes.

    python3 benches/summarise.py OUT

Load runs: the median over repeated runs of throughput and of each latency
percentile, and the sums of leaks, lost memories and server counters.
Criterion: the median time per iteration over its samples, from its
estimates.json files. Python standard library only.
"""

import glob
import json
import os
import re
import statistics
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def load_runs(out):
    groups = {}
    for path in sorted(glob.glob(os.path.join(out, "load-*.json"))):
        name = re.sub(r"-\d+\.json$", "", os.path.basename(path))
        groups.setdefault(name, []).append(load(path))
    if not groups:
        return
    print("## Load tool\n")
    for name, runs in groups.items():
        cfg = runs[0]["config"]
        print(f"### {name} ({len(runs)} runs)\n")
        print(f"{cfg['users']} users × ({cfg['memories']} memories + {cfg['ops']} ops), "
              f"{cfg['clients']} clients, mix `{cfg['mix']}`, foreign share {cfg['foreign_share']}\n")
        med = lambda xs: statistics.median(xs)
        print(f"- requests per run: {', '.join(str(r['requests_total']) for r in runs)}")
        each = ", ".join("%.1f" % r["throughput_rps"] for r in runs)
        print(f"- throughput: median {med([r['throughput_rps'] for r in runs]):.1f} req/s (runs: {each})")
        print(f"- wall time: median {med([r['elapsed_secs'] for r in runs]):.1f} s")
        errors = {}
        for r in runs:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        print(f"- errors (all runs): {errors or 'none'}")
        guard = [r["server"]["guard_dropped"] for r in runs]
        shared = [r["server"]["shared_collection_requests"] for r in runs]
        print(f"- server, per run: guard dropped {guard}; store calls on a shared collection {shared}")
        print(f"- memories checked per run: {[r['checked'] for r in runs]}; "
              f"probes at other users' live ids per run: {[r['foreign_probes'] for r in runs]}")
        print(f"- leaks: {sum(r['leaks'] for r in runs)}, lost: {sum(r['lost'] for r in runs)}, "
              f"stale: {sum(r['stale'] for r in runs)} (all runs)\n")
        print("| kind | requests per run | p50 ms | p95 ms | p99 ms |")
        print("|---|---:|---:|---:|---:|")
        kinds = runs[0]["latency"].keys()
        for kind in kinds:
            stats = [r["latency"][kind] for r in runs if kind in r["latency"]]
            print(f"| {kind} | {med([s['count'] for s in stats]):.0f} | "
                  f"{med([s['p50_ms'] for s in stats]):.2f} | {med([s['p95_ms'] for s in stats]):.2f} | "
                  f"{med([s['p99_ms'] for s in stats]):.2f} |")
        print()


def fmt_time(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def criterion(out):
    rows = []
    for bench in glob.glob(os.path.join(out, "criterion", "**", "new", "benchmark.json"), recursive=True):
        meta = load(bench)
        est = load(os.path.join(os.path.dirname(bench), "estimates.json"))
        median = est["median"]["point_estimate"]
        per = ""
        thr = meta.get("throughput") or {}
        if "Elements" in thr:
            per = f"{thr['Elements'] / (median / 1e9):,.0f} elements/s"
        rows.append((meta["full_id"], median, per))
    if not rows:
        return
    print("## Criterion micro-benchmarks (median time per iteration)\n")
    print("| benchmark | median | throughput |")
    print("|---|---:|---:|")
    for full_id, median, per in sorted(rows):
        print(f"| {full_id} | {fmt_time(median)} | {per} |")
    print()
    by_id = {r[0]: r[1] for r in rows}
    for n in ("100", "10000"):
        bare = by_id.get(f"isolation/bare/{n}")
        engine = by_id.get(f"engine_search/{n}")
        cordon = by_id.get(f"isolation/cordon/{n}")
        if bare and engine and cordon:
            print(f"- at {n} memories: Cordon's whole path {fmt_time(cordon)} / bare {fmt_time(bare)} = "
                  f"{cordon / bare:.2f}×; of which the engine adapter (shard lookup, blocking-pool hop, "
                  f"owner filter) {engine / bare:.2f}× and token + owner hash + guard "
                  f"{cordon / engine:.2f}× on top")
    bare, cordon = by_id.get("endpoint/bare"), by_id.get("endpoint/cordon")
    if bare and cordon:
        print(f"- search endpoint: Cordon over HTTP {fmt_time(cordon)} / bare embed + search "
              f"{fmt_time(bare)} = {cordon / bare:.2f}×")
    print()


def naming(out):
    path = os.path.join(out, "naming.json")
    if not os.path.exists(path):
        return
    doc = load(path)
    print(f"## Naming analysis: {doc['users']:,} synthetic users\n")
    print("| name length (hex chars) | bits | colliding pairs found | expected | "
          "users sharing a collection found | expected |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in doc["rows"]:
        print(f"| {r['hex_chars']} | {r['bits']} | {r['colliding_pairs']:,} | "
              f"{r['colliding_pairs_expected']:.4g} | {r['users_sharing_a_name']:,} | "
              f"{r['users_sharing_a_name_expected']:.4g} |")
    print()


def embed(out):
    path = os.path.join(out, "embed.json")
    if not os.path.exists(path):
        return
    doc = load(path)
    s = doc["settings"]
    print(f"## Embedding: texts per second ({s['rounds']} rounds of {s['texts']} texts, "
          f"{s['tokens_mean']:.1f} tokens on average)\n")
    print("| row | median | min | max |")
    print("|---|---:|---:|---:|")
    for r in doc["rows"]:
        print(f"| {r['row']} | {r['median']:.1f} | {r['min']:.1f} | {r['max']:.1f} |")
    print()


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    naming(out)
    load_runs(out)
    criterion(out)
    embed(out)


if __name__ == "__main__":
    main()
