#!/usr/bin/env bash
# palpipe's side of the score bench (bench/score.sh): `palpipe score --input ROWS --json`
# on STORE, the whole process timed (start, store and model loading, vector lookups,
# scoring, one JSON line per candidate written to OUT); prints one JSON object.
#   bash bench/score_palpipe.sh BIN STORE MODEL ROWS REWARDS [OUT]
set -euo pipefail
BIN=$1 STORE=$2 MODEL=$3 ROWS=$4 REWARDS=$5 OUT=${6:-/dev/null}
t0=$(date +%s.%N)
"$BIN" score --model "$MODEL" --input "$ROWS" --json --store "$STORE" --quiet > "$OUT"
t1=$(date +%s.%N)
python3 -c 'import json, sys
n, t0, t1 = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print(json.dumps({"tool": "palpipe", "rewards": n, "process_s": t1 - t0,
                  "rewards_per_s": n / (t1 - t0)}))' "$REWARDS" "$t0" "$t1"
