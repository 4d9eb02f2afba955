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
