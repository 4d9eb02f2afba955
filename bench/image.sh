#!/usr/bin/env bash
# The image path's speed (issue 4): Pick-a-Pic reading + hashing + the leakage split over
# generated shards of more than 1 GB, beside b3sum over the same shard files in the same run;
# the Pick-a-Filter stage's time per 1,000 filtered images; peak memory of the ingest on a
# big and a small shard set (it streams: the two should be close). See bench/README.md.
#
#   bash bench/image.sh                   # ~1.1 GB of shards (ROWS=5000 at 256 px)
#   ROWS=12000 bash bench/image.sh        # ~2.6 GB
#   HASH_ROUNDS=3 bash bench/image.sh     # interleaved rounds of the hashing comparison (5)
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS=${ROWS:-5000}
HASH_ROUNDS=${HASH_ROUNDS:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/palpipe/target}
TOOLS=${PALPIPE_TOOLS:-$HOME/.cache/palpipe/tools}
if [ -n "${PALPIPE_BIN:-}" ]; then
    BIN=$PALPIPE_BIN          # a binary built elsewhere (e.g. a release build)
else
    cargo build --quiet --bin palpipe
    BIN="$CARGO_TARGET_DIR/debug/palpipe"
fi

B3SUM=$(command -v b3sum || true)
if [ -z "$B3SUM" ]; then
    B3SUM="$TOOLS/bin/b3sum"
    if [ ! -x "$B3SUM" ]; then
        echo "installing b3sum into $TOOLS (cargo install)" >&2
        cargo install --quiet --locked b3sum --root "$TOOLS"
    fi
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
DATE=${BENCH_DATE:-$(date -u +%Y-%m-%d-%H%M)}
OUT="bench/results/${DATE}-image.json"

echo "== generating $ROWS-row shards at 256 px" >&2
GEN_T0=$(date +%s.%N)
"$BIN" fixtures pickapic --quiet --out "$TMP/big" --rows "$ROWS" --image-size 256 --noise 40 >/dev/null
GEN_S=$(echo "$(date +%s.%N) - $GEN_T0" | bc)
"$BIN" fixtures pickapic --quiet --out "$TMP/small" >/dev/null
SHARDS=$(ls "$TMP"/big/v1/*.parquet "$TMP"/big/v2/*.parquet)
SHARD_BYTES=$(cat $SHARDS | wc -c)

timed() { # label, command...: prints "seconds peak_kib" of the command
    local label=$1; shift
    /usr/bin/time -f "%e %M" -o "$TMP/time-$label" "$@" > "$TMP/out-$label"
    cat "$TMP/time-$label"
}

echo "== b3sum (all threads, then one) over the shard files" >&2
cat $SHARDS > /dev/null   # warm the page cache for everyone alike
read B3_S B3_KB < <(timed b3 "$B3SUM" $SHARDS)
read B31_S B31_KB < <(timed b31 "$B3SUM" --num-threads 1 $SHARDS)

# Interleaved (bench/README.md, "How we measure"): b3sum, palpipe's reader + hashing, and
# parquet decoding alone, HASH_ROUNDS rounds each, A B C A B C …, 2 threads each; the ratio
# quoted in bench/README.md comes from this file.
echo "== interleaved: b3sum, palpipe read+hash, parquet decoding alone ($HASH_ROUNDS rounds)" >&2
python3 bench/interleave.py --name hash --rounds "$HASH_ROUNDS" --threads 2 \
    --tool "palpipe=$BIN bench-hash --data-dir $TMP/big --verify none" \
    --tool "b3sum=$B3SUM --num-threads 2 $TMP/big/v1/*.parquet $TMP/big/v2/*.parquet >/dev/null && echo '{}'" \
    --tool "decode-only=$BIN bench-hash --data-dir $TMP/big --decode-only" \
    --metric wall_s --version "shard_bytes=$SHARD_BYTES" \
    --out "bench/results/${DATE}-hash.json" >&2

echo "== palpipe reader (parquet + blake3 of every image + fingerprints), no store" >&2
read H_S H_KB < <(timed hash "$BIN" bench-hash --data-dir "$TMP/big" --verify none)
read HH_S HH_KB < <(timed hashh "$BIN" bench-hash --data-dir "$TMP/big" --verify header)
echo "== parquet decoding alone (the reader's columns, batches and threads; no hashing, no rows)" >&2
read D_S D_KB < <(timed decode "$BIN" bench-hash --data-dir "$TMP/big" --decode-only)
[ -n "$D_S" ] || { echo "bench-hash --decode-only failed" >&2; exit 1; }

pipeline() { # data_dir, verify
    cat <<YAML
name: bench-image
stages:
  - {name: ingest, kind: pickapic, data_dir: $1, verify_images: $2}
  - {name: leakage, kind: dedup}
  - {name: filter, kind: pick_a_filter, seen_users: 12}
YAML
}
echo "== palpipe run: ingest into Lance + dedup + pick_a_filter (big, then small)" >&2
pipeline "$TMP/big" none > "$TMP/big.yaml"
pipeline "$TMP/small" none > "$TMP/small.yaml"
read R_S R_KB < <(timed run "$BIN" run "$TMP/big.yaml" --store "$TMP/store-big" --json --quiet)
read RS_S RS_KB < <(timed runs "$BIN" run "$TMP/small.yaml" --store "$TMP/store-small" --json --quiet)

python3 - "$TMP" "$OUT" "$ROWS" "$SHARD_BYTES" "$GEN_S" \
    "$B3_S" "$B31_S" "$H_S" "$H_KB" "$HH_S" "$R_S" "$R_KB" "$RS_S" "$RS_KB" "$D_S" <<'PY'
import json, os, sys
(tmp, out, rows, shard_bytes, gen_s, b3_s, b31_s, h_s, h_kb, hh_s, r_s, r_kb, rs_s,
 rs_kb, d_s) = sys.argv[1:]
shard_bytes = int(shard_bytes)
hash_run = json.load(open(os.path.join(tmp, "out-hash")))
header_run = json.load(open(os.path.join(tmp, "out-hashh")))
img = hash_run["image_bytes"]
def stages(name):
    text = open(os.path.join(tmp, f"out-{name}")).read()
    run = json.loads(text)
    return {s["name"]: s for s in run["stages"]}
big, small = stages("run"), stages("runs")
import re
filt = big["filter"]
m = re.search(r"filtered winners (\d+), losers (\d+)", filt["summary"])
filtered = int(m.group(1)) + int(m.group(2))
ingest_s = big["ingest"]["seconds"]
result = {
    "machine": {"nproc": os.cpu_count(), "loadavg_at_end": os.getloadavg()},
    "rows": int(rows),
    "shard_bytes": shard_bytes,
    "image_bytes": img,
    "generate_s": float(gen_s),
    "b3sum": {"seconds": float(b3_s), "mb_per_s": shard_bytes / 1e6 / float(b3_s)},
    "b3sum_1_thread": {"seconds": float(b31_s), "mb_per_s": shard_bytes / 1e6 / float(b31_s)},
    "palpipe_read_hash": {"verify": "none", "seconds": float(h_s),
                          "mb_per_s_of_shards": shard_bytes / 1e6 / float(h_s),
                          "inner": hash_run, "peak_rss_mib": int(h_kb) / 1024},
    "palpipe_read_hash_header": {"seconds": float(hh_s),
                                 "mb_per_s_of_shards": shard_bytes / 1e6 / float(hh_s)},
    "parquet_decode_only": {"seconds": float(d_s),
                            "mb_per_s_of_shards": shard_bytes / 1e6 / float(d_s),
                            "inner": json.load(open(os.path.join(tmp, "out-decode")))},
    "ratio_decode_time_over_palpipe": float(d_s) / float(h_s),
    "ratio_b3sum_time_over_palpipe": {
        "all_threads": float(b3_s) / float(h_s),
        "one_thread": float(b31_s) / float(h_s)},
    "ingest_stage": {"seconds": ingest_s, "image_mb_per_s": img / 1e6 / ingest_s,
                     "summary": big["ingest"]["summary"]},
    "dedup_stage_s": big["leakage"]["seconds"],
    "dedup_summary": big["leakage"]["summary"],
    "filter_stage": {"seconds": filt["seconds"], "filtered_images": filtered,
                     "seconds_per_1000_images": 1000 * filt["seconds"] / filtered},
    "peak_rss_mib": {"run_big": int(r_kb) / 1024, "run_small": int(rs_kb) / 1024,
                     },
}
with open(out, "w") as fh:
    json.dump(result, fh, indent=2, sort_keys=True)
    fh.write("\n")
print(f"shards {shard_bytes/1e9:.2f} GB ({img/1e9:.2f} GB of JPEG bytes), {rows} v1-train rows")
print(f"b3sum (2 threads)        {result['b3sum']['mb_per_s']:8.0f} MB/s")
print(f"b3sum --num-threads 1    {result['b3sum_1_thread']['mb_per_s']:8.0f} MB/s")
print(f"palpipe read+hash        {result['palpipe_read_hash']['mb_per_s_of_shards']:8.0f} MB/s"
      f"  (b3sum time / palpipe time: {result['ratio_b3sum_time_over_palpipe']['all_threads']:.2f})")
print(f"palpipe read+hash+header {result['palpipe_read_hash_header']['mb_per_s_of_shards']:8.0f} MB/s")
print(f"parquet decoding alone   {result['parquet_decode_only']['mb_per_s_of_shards']:8.0f} MB/s"
      f"  (its time / palpipe read+hash time: {result['ratio_decode_time_over_palpipe']:.2f})")
print(f"ingest stage into Lance  {result['ingest_stage']['image_mb_per_s']:8.0f} MB/s of images ({ingest_s:.1f} s)")
print(f"dedup stage              {big['leakage']['seconds']:8.2f} s  ({big['leakage']['summary'][:60]}…)")
print(f"pick_a_filter            {result['filter_stage']['seconds_per_1000_images']:8.2f} s per 1,000 images ({filtered} images)")
print(f"peak RSS: run on {shard_bytes/1e9:.1f} GB {int(r_kb)/1024:.0f} MiB; on the 14 MB default fixtures {int(rs_kb)/1024:.0f} MiB")
print(f"wrote {out}")
PY
