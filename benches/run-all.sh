#!/usr/bin/env bash
# Every measurement behind benches/RESULTS.md, one after another, into OUT.
#
#   benches/run-all.sh [OUT]            (default OUT: /tmp/cordon-bench)
#
# RUNS (default 3) sets how many times each load run repeats; QDRANT_URL (a
# Qdrant 1.18+ gRPC URL) adds the load runs over a Qdrant server; VENV
# (default ~/.cache/cordon/bench-venv, see README) is the Python environment
# of the embedding baseline, which is skipped when it is missing. Run it on
# an idle machine: every figure is wall-clock time on shared cores.
# `python3 benches/summarise.py OUT` turns the results into the tables.
# A failing step (a leak, a lost memory) does not stop the others; the
# script exits non-zero at the end if any step failed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
out=${1:-/tmp/cordon-bench}
runs=${RUNS:-3}
venv=${VENV:-$HOME/.cache/cordon/bench-venv}
mkdir -p "$out"

scripts/setup
cargo build --release --locked --bin cordon
cargo bench --locked --no-run --bench naming --bench isolation --bench embedding --bench search

say() { echo "run-all: $*" >&2; }
failed=()
# Runs a step with its output teed to a file; a failure is recorded, not fatal.
step() {
  local file=$1; shift
  if ! "$@" 2>&1 | tee "$out/$file"; then
    failed+=("$file")
    say "FAILED: $file"
  fi
}

say "naming analysis"
step naming.txt cargo bench --locked --bench naming -- --users 10000000 --json "$out/naming.json"

for i in $(seq 1 "$runs"); do
  say "load, embedded engine, run $i"
  step load-embedded-$i.txt benches/load.sh -- --users 1000 --json "$out/load-embedded-$i.json"
  say "load, embedded engine, collision mode, run $i"
  step load-embedded-collision-$i.txt benches/load.sh --collision -- --users 1000 --json "$out/load-embedded-collision-$i.json"
  if [ -n "${QDRANT_URL:-}" ]; then
    say "load, Qdrant server, run $i"
    step load-qdrant-$i.txt benches/load.sh --qdrant "$QDRANT_URL" -- --users 1000 --json "$out/load-qdrant-$i.json"
    say "load, Qdrant server, collision mode, run $i"
    step load-qdrant-collision-$i.txt benches/load.sh --qdrant "$QDRANT_URL" --collision -- --users 1000 --json "$out/load-qdrant-collision-$i.json"
  fi
done

say "criterion benches"
# Criterion writes its estimates under CRITERION_HOME; a fresh one holds this
# run's benchmarks only.
rm -rf "$out/criterion"
export CRITERION_HOME="$out/criterion"
step criterion.txt cargo bench --locked --bench isolation --bench embedding --bench search

if [ -x "$venv/bin/python" ]; then
  say "embedding baseline"
  step embed.txt "$venv/bin/python" benches/embed_baseline.py --json "$out/embed.json"
else
  say "no Python environment at $venv: embedding baseline skipped (see README)"
fi
python3 benches/summarise.py "$out" | tee "$out/summary.md"
if [ ${#failed[@]} -gt 0 ]; then
  say "failed steps: ${failed[*]}"
  exit 1
fi
