#!/usr/bin/env bash
# Ingest of JSON lines text pairs (issue 12, "Speed and memory"): `palpipe ingest` on a
# generated file of each size in SIZES (MB; default 100 and 1000), interleaved with the
# reference the issue names, `wc -l` plus a Python `json.loads` pass over the same file
# (bench/ingest_pass.py), through bench/interleave.py (A, B, A, B, ROUNDS rounds, the load
# checked before every run; see bench/README.md "How we measure"). Reports per size the peak
# RSS of palpipe (flat in file size is the goal), and the throughput (MB/s) of palpipe, of
# the reference, of `wc -l` and of `json.loads` alone (the goal: palpipe >= 50% of the
# reference). Writes bench/results/<date>-ingest-<MB>.json per size (interleave.py's full
# record) and bench/results/<date>-ingest.json (the summary). Run by `make bench` (skip with
# INGEST=0), or alone:
#
#   PALPIPE_BIN=path/to/palpipe bash bench/ingest.sh
#   SIZES="100" ROUNDS=3 bash bench/ingest.sh
#   BEFORE_BIN=path/to/earlier/palpipe bash bench/ingest.sh   # a third tool, palpipe-before
#
# Disk: the file, palpipe's temporary run files (about the file's size) and the store, per
# size at once, under BENCH_TMP (default: a new folder in TMPDIR).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${PALPIPE_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/palpipe/target}/debug/palpipe}
SIZES=${SIZES:-"100 1000"}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
TMP=${BENCH_TMP:-$(mktemp -d)}
trap 'rm -rf "$TMP"' EXIT
[ -x /usr/bin/time ] || { echo "error: GNU time (/usr/bin/time) is needed: apt-get install time" >&2; exit 1; }
[ -z "${BEFORE_BIN:-}" ] || [ -x "$BEFORE_BIN" ] || { echo "error: BEFORE_BIN=$BEFORE_BIN is not an executable file" >&2; exit 2; }
[ -x "$BIN" ] || { printf "error: no palpipe binary at %s\nhint: cargo build --bin palpipe, or set PALPIPE_BIN\n" "$BIN" >&2; exit 1; }
DATE=${BENCH_DATE:-$(date -u +%Y-%m-%d-%H%M)}
OUT="bench/results/$DATE-ingest.json"
mkdir -p bench/results

# One file per size: rows of {annotator, prompt, chosen, rejected}, ~ 640 bytes each, 500
# annotators, texts drawn from a seeded generator (so almost every item is distinct).
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

parts=()
for mb in $SIZES; do
    file="$TMP/pairs-$mb.jsonl"
    echo "== generating $mb MB" >&2
    gen "$mb" "$file"
    part="bench/results/$DATE-ingest-$mb.json"
    # TMPDIR: palpipe's run files go beside the file, and are removed when it ends.
    TMPDIR="$TMP" python3 bench/interleave.py --name "ingest-$mb" --rounds "$ROUNDS" \
        --threads "$THREADS" \
        --tool "palpipe=python3 bench/ingest_pass.py palpipe $file $TMP/store-$mb $BIN" \
        --tool "reference=python3 bench/ingest_pass.py reference $file" \
        ${BEFORE_BIN:+--tool "palpipe-before=python3 bench/ingest_pass.py palpipe $file $TMP/store-before-$mb $BEFORE_BIN"} \
        --metric mb_per_s --out "$part"
    parts+=("$part")
    rm -f "$file"
done

python3 - "$OUT" "${parts[@]}" <<'PY'
import json, sys
out, parts = sys.argv[1], sys.argv[2:]
rows = []
for p in parts:
    r = json.load(open(p))
    pp, ref = r["stats"]["palpipe"], r["stats"]["reference"]
    med = lambda s, k: round(s[k]["median"], 1)
    rows.append({
        "size_mb": med(pp, "mb"),
        "palpipe_mb_per_s": med(pp, "mb_per_s"),
        "reference_mb_per_s": med(ref, "mb_per_s"),
        "wc_l_mb_per_s": med(ref, "wc_l_mb_per_s"),
        "json_loads_mb_per_s": med(ref, "json_loads_mb_per_s"),
        "palpipe_over_reference": round(pp["mb_per_s"]["median"] / ref["mb_per_s"]["median"], 2)
        if r["quotable"] else None,
        "palpipe_peak_rss_mib": med(pp, "peak_rss_mib"),
        "palpipe_peak_rss_mib_max": round(pp["peak_rss_mib"]["max"], 1),
        **({"palpipe_before_mb_per_s": med(r["stats"]["palpipe-before"], "mb_per_s"),
            "palpipe_before_peak_rss_mib": med(r["stats"]["palpipe-before"], "peak_rss_mib")}
           if "palpipe-before" in r["stats"] else {}),
        "quotable": r["quotable"],
        "refused": r["refused"],
        "detail": p,
    })
with open(out, "w") as fh:
    json.dump({"name": "ingest", "goal": "palpipe >= 0.5 x reference (wc -l + json.loads); "
               "peak RSS flat in size", "sizes": rows}, fh, indent=2)
    fh.write("\n")
print(f"{'MB':>7} {'palpipe MB/s':>13} {'wc+json MB/s':>13} {'wc -l':>8} {'json.loads':>11} "
      f"{'ratio':>6} {'peak RSS MiB':>13}")
for r in rows:
    ratio = f"{r['palpipe_over_reference']:.2f}" if r["quotable"] else "—"
    before = (f"   palpipe-before {r['palpipe_before_mb_per_s']} MB/s, peak RSS "
              f"{r['palpipe_before_peak_rss_mib']} MiB" if "palpipe_before_mb_per_s" in r else "")
    print(f"{r['size_mb']:>7} {r['palpipe_mb_per_s']:>13} {r['reference_mb_per_s']:>13} "
          f"{r['wc_l_mb_per_s']:>8} {r['json_loads_mb_per_s']:>11} {ratio:>6} "
          f"{r['palpipe_peak_rss_mib']:>13}{before}")
print(f"medians of the interleaved rounds; written {out}"
      + ("" if all(r["quotable"] for r in rows) else "; NOT QUOTABLE (load): no ratio"))
PY
