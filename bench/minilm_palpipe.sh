#!/usr/bin/env bash
# palpipe's side of the MiniLM bench: one timed pass over FILE with the ignored test
# `embed::bert::tests::bench_minilm_throughput` (the encoder `palpipe embed` uses), run from
# the library's test binary, printed as one JSON object like bench/minilm_reference.py's.
#   bash bench/minilm_palpipe.sh TEST_BINARY FILE.jsonl BATCH
set -euo pipefail
bin=$1 file=$2 batch=$3
log=$(PALPIPE_BENCH_FILE="$file" PALPIPE_BENCH_BATCHES="$batch" PALPIPE_BENCH_ROUNDS=1 \
    "$bin" embed::bert::tests::bench_minilm_throughput --ignored --nocapture 2>&1) \
    || { echo "$log" >&2; exit 1; }
LOG="$log" python3 - "$batch" <<'PY'
import json, os, re, sys
log = os.environ["LOG"]
m = re.search(r"batch\s+\d+: best\s+([\d.]+) sentences/s, median\s+([\d.]+) sentences/s", log)
n = re.search(r"(\d+) statements", log)
if not m or not n:
    sys.exit("could not find sentences/s in the test's output:\n" + log)
print(json.dumps({"tool": "palpipe", "batch": int(sys.argv[1]), "statements": int(n.group(1)),
                  "median_sentences_per_s": float(m.group(2))}))
PY
