#!/usr/bin/env bash
# Ingest of JSON lines text pairs (issue 12, "Speed and memory"): `palpipe ingest` on a
# generated file of SIZES (default 100 MB and 1 GB), beside `wc -l` and a Python
# `json.loads` pass over the same file. Reports peak RSS (GNU time) per size, so that memory
# flat in file size shows, and throughput (MB/s) of all three. Writes
# bench/results/<date>-ingest.json. Run by `make bench` (skip with INGEST=0), or alone:
#
#   PALPIPE_BIN=path/to/palpipe bash bench/ingest.sh
#   SIZES="100" bash bench/ingest.sh          # sizes in MB
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${PALPIPE_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/palpipe/target}/debug/palpipe}
SIZES=${SIZES:-"100 1000"}
TMP=${BENCH_TMP:-$(mktemp -d)}
trap 'rm -rf "$TMP"' EXIT
[ -x /usr/bin/time ] || { echo "error: GNU time (/usr/bin/time) is needed: apt-get install time" >&2; exit 1; }
OUT="bench/results/$(date -u +%Y-%m-%d)-ingest.json"

# One file per size: rows of {annotator, prompt, chosen, rejected}, ~ 600 bytes each, 500
# annotators, texts drawn from a seeded generator (so most items are distinct).
gen() {
    python3 - "$1" "$2" <<'PY'
import json, random, sys
target, path = int(sys.argv[1]) * 1_000_000, sys.argv[2]
rng = random.Random(0)
words = [f"w{i}" for i in range(5000)]
def text(n):
    return " ".join(rng.choice(words) for _ in range(n))
size = 0
with open(path, "w") as f:
    i = 0
    while size < target:
        line = json.dumps({"annotator": f"a{i % 500}", "prompt": text(20),
                           "chosen": text(40), "rejected": text(40)}) + "\n"
        f.write(line)
        size += len(line)
        i += 1
PY
}

results="[]"
for mb in $SIZES; do
    file="$TMP/pairs-$mb.jsonl"
    echo "== generating $mb MB" >&2
    gen "$mb" "$file"
    bytes=$(stat -c %s "$file")
    t0=$(date +%s.%N); wc -l < "$file" > /dev/null; t1=$(date +%s.%N)
    python3 -c "
import json, sys
for line in open(sys.argv[1], 'rb'):
    json.loads(line)
" "$file"
    t2=$(date +%s.%N)
    store="$TMP/store-$mb"
    /usr/bin/time -f "%M %e" -o "$TMP/time-$mb" "$BIN" ingest "$file" --dataset bench \
        --column user=annotator --column prompt=prompt --column chosen=chosen \
        --column rejected=rejected --store "$store" --quiet > "$TMP/out-$mb"
    read -r rss_kb wall < "$TMP/time-$mb"
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    results=$(python3 - "$results" "$mb" "$bytes" "$t0" "$t1" "$t2" "$rss_kb" "$wall" "$load" <<'PY'
import json, sys
res = json.loads(sys.argv[1])
mb, size = int(sys.argv[2]), int(sys.argv[3])
t0, t1, t2 = map(float, sys.argv[4:7])
rss_kb, wall = int(sys.argv[7]), float(sys.argv[8])
mbs = size / 1e6
res.append({"size_mb": round(mbs, 1), "wc_l_mb_per_s": round(mbs / (t1 - t0), 1),
            "python_json_loads_mb_per_s": round(mbs / (t2 - t1), 1),
            "palpipe_ingest_mb_per_s": round(mbs / wall, 1),
            "palpipe_ingest_s": wall, "palpipe_peak_rss_mib": round(rss_kb / 1024, 1),
            "wc_plus_python_s": round(t2 - t0, 2),
            "loadavg_after": sys.argv[9]})
print(json.dumps(res))
PY
)
    rm -rf "$store" "$file"
done
python3 - "$results" "$OUT" <<'PY'
import json, os, sys
res = json.loads(sys.argv[1])
with open(sys.argv[2], "w") as fh:
    json.dump({"nproc": os.cpu_count(), "runs": res}, fh, indent=2)
    fh.write("\n")
print(f"{'MB':>7} {'wc -l MB/s':>11} {'json.loads MB/s':>16} {'palpipe MB/s':>13} {'peak RSS MiB':>13}  load")
for r in res:
    print(f"{r['size_mb']:>7} {r['wc_l_mb_per_s']:>11} {r['python_json_loads_mb_per_s']:>16} "
          f"{r['palpipe_ingest_mb_per_s']:>13} {r['palpipe_peak_rss_mib']:>13}  {r['loadavg_after']}")
print(f"written {sys.argv[2]}; palpipe's target: >= 50% of the wc -l + json.loads pass "
      "(compare palpipe_ingest_s with wc_plus_python_s)")
PY
