#!/usr/bin/env bash
# PAL-B training/scoring speed: palpipe (candle, dev profile) vs the PyTorch yardstick,
# both data modes, same machine, same invocation. See bench/README.md.
#
#   bash bench/run.sh                 # defaults: 50 timed steps after 5 warm-up steps
#   STEPS=20 WARMUP=3 bash bench/run.sh
#   BENCH_VENV=/path/to/venv bash bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=${STEPS:-50}
WARMUP=${WARMUP:-5}
N=${N:-200000}
EVAL_N=${EVAL_N:-20000}
VENV=${BENCH_VENV:-/tmp/benchvenv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/palpipe/target}

# The dev profile: dependencies at opt-level 3, our crate at opt-level 1 (see Cargo.toml).
cargo build --quiet --bin palpipe
BIN="$CARGO_TARGET_DIR/debug/palpipe"

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "creating $VENV with PyTorch (CPU wheel index first, then PyPI)" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet numpy
    "$VENV/bin/pip" install --quiet torch --index-url https://download.pytorch.org/whl/cpu \
        || "$VENV/bin/pip" install --quiet torch
fi

DATE=$(date -u +%Y-%m-%d)
OUT="bench/results/${DATE}-pal.json"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
COMMON=(--n "$N" --steps "$STEPS" --warmup "$WARMUP" --eval-n "$EVAL_N")

for mode in distinct repeating; do
    echo "== $mode: palpipe" >&2
    "$BIN" bench-pal "--$mode" "${COMMON[@]}" > "$TMP/palpipe-$mode.json"
    echo "== $mode: pytorch" >&2
    "$VENV/bin/python" bench/pal_reference.py "--$mode" "${COMMON[@]}" --threads 2 \
        > "$TMP/pytorch-$mode.json"
done

"$VENV/bin/python" - "$TMP" "$OUT" <<'PY'
import json, os, sys, platform
tmp, out = sys.argv[1], sys.argv[2]
runs = {}
for mode in ("distinct", "repeating"):
    for tool in ("palpipe", "pytorch"):
        with open(os.path.join(tmp, f"{tool}-{mode}.json")) as fh:
            runs[f"{tool}-{mode}"] = json.load(fh)
load = os.getloadavg()
result = {
    "machine": {"nproc": os.cpu_count(), "platform": platform.platform(),
                "loadavg_at_end": load},
    "runs": runs,
    "ratio_palpipe_over_pytorch": {
        mode: {
            "train": runs[f"palpipe-{mode}"]["train_comparisons_per_s"]
                     / runs[f"pytorch-{mode}"]["train_comparisons_per_s"],
            "eval": runs[f"palpipe-{mode}"]["eval_comparisons_per_s"]
                    / runs[f"pytorch-{mode}"]["eval_comparisons_per_s"],
        } for mode in ("distinct", "repeating")
    },
}
with open(out, "w") as fh:
    json.dump(result, fh, indent=2, sort_keys=True)
    fh.write("\n")

print(f"{'mode':<10} {'what':<14} {'palpipe':>10} {'pytorch':>10} {'ratio':>7}")
for mode in ("distinct", "repeating"):
    p, t = runs[f"palpipe-{mode}"], runs[f"pytorch-{mode}"]
    for key, label in (("train_comparisons_per_s", "train cmp/s"),
                       ("eval_comparisons_per_s", "score cmp/s")):
        print(f"{mode:<10} {label:<14} {p[key]:>10.0f} {t[key]:>10.0f} {p[key]/t[key]:>7.2f}")
    print(f"{mode:<10} {'peak RSS MiB':<14} {p['peak_rss_mib']:>10.0f} {t['peak_rss_mib']:>10.0f}")
    for ph in ("forward", "backward", "optimizer"):
        print(f"{mode:<10} {ph+' ms':<14} {p['phases_ms_per_step'][ph]:>10.1f} "
              f"{t['phases_ms_per_step'][ph]:>10.1f}")
print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
      f"(nproc {os.cpu_count()}); written {out}")
PY

# ---------------------------------------------------------------------------------------
# MiniLM embedding speed: palpipe (candle, dev profile) vs sentence-transformers (PyTorch),
# all-MiniLM-L6-v2 on the 6,000 persona statements, batch 32, 2 threads. Skip with
# MINILM=0; MINILM_ROUNDS (default 3) rounds each, best and median reported.
# ---------------------------------------------------------------------------------------
if [ "${MINILM:-1}" != "0" ]; then
    PERSONA=${PERSONA:-/work/shared/data/persona}
    MINILM_ROUNDS=${MINILM_ROUNDS:-3}
    MOUT="bench/results/${DATE}-minilm.json"
    MTMP=$(mktemp -d)
    trap 'rm -rf "$TMP" "$MTMP"' EXIT
    if ! "$VENV/bin/python" -c "import sentence_transformers" 2>/dev/null; then
        echo "installing sentence-transformers into $VENV" >&2
        "$VENV/bin/pip" install --quiet transformers scipy scikit-learn
        "$VENV/bin/pip" install --quiet --no-deps sentence-transformers
    fi
    cat "$PERSONA"/*.jsonl > "$MTMP/persona.jsonl"
    echo "== minilm: palpipe" >&2
    # The ignored throughput test in src/embed/bert.rs (same encoder as `palpipe embed`).
    RAYON_NUM_THREADS=2 PALPIPE_BENCH_FILE="$MTMP/persona.jsonl" PALPIPE_BENCH_BATCHES=32 \
        PALPIPE_BENCH_ROUNDS="$MINILM_ROUNDS" \
        /usr/bin/time -v cargo test --quiet --lib embed::bert::tests::bench_minilm_throughput \
        -- --ignored --nocapture > "$MTMP/palpipe.log" 2>&1 \
        || { cat "$MTMP/palpipe.log" >&2; exit 1; }
    echo "== minilm: sentence-transformers" >&2
    "$VENV/bin/python" bench/minilm_reference.py --batch 32 --threads 2 \
        --rounds "$MINILM_ROUNDS" "$PERSONA"/*.jsonl > "$MTMP/reference.json"
    "$VENV/bin/python" - "$MTMP" "$MOUT" <<'PY'
import json, os, re, sys, platform
tmp, out = sys.argv[1], sys.argv[2]
log = open(os.path.join(tmp, "palpipe.log")).read()
m = re.search(r"batch\s+32: best\s+([\d.]+) sentences/s, median\s+([\d.]+) sentences/s", log)
if not m:
    sys.exit("could not find palpipe's sentences/s in its log:\n" + log)
rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", log)
pal = {"tool": "palpipe (candle, dev profile)", "batch": 32,
       "statements": int(re.search(r"(\d+) statements", log).group(1)),
       "best_sentences_per_s": float(m.group(1)),
       "median_sentences_per_s": float(m.group(2)),
       # /usr/bin/time of `cargo test`: the test binary is the largest child.
       "peak_rss_mib": int(rss.group(1)) / 1024 if rss else None}
ref = json.load(open(os.path.join(tmp, "reference.json")))
load = os.getloadavg()
result = {"machine": {"nproc": os.cpu_count(), "platform": platform.platform(),
                      "loadavg_at_end": load},
          "runs": {"palpipe": pal, "sentence-transformers": ref},
          "ratio_palpipe_over_sentence_transformers": {
              "best": pal["best_sentences_per_s"] / ref["best_sentences_per_s"],
              "median": pal["median_sentences_per_s"] / ref["median_sentences_per_s"]}}
with open(out, "w") as fh:
    json.dump(result, fh, indent=2, sort_keys=True)
    fh.write("\n")
print(f"{'minilm':<10} {'what':<14} {'palpipe':>10} {'st':>10} {'ratio':>7}")
for k, label in (("best_sentences_per_s", "best sent/s"), ("median_sentences_per_s", "median sent/s")):
    print(f"{'minilm':<10} {label:<14} {pal[k]:>10.1f} {ref[k]:>10.1f} {pal[k]/ref[k]:>7.2f}")
prss = pal["peak_rss_mib"]
print(f"{'minilm':<10} {'peak RSS MiB':<14} {prss if prss is not None else float('nan'):>10.0f} "
      f"{ref['peak_rss_mib']:>10.0f}")
print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; written {out}")
PY
fi
