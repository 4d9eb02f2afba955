#!/usr/bin/env python3
"""The goals of issues 16 and 12 in one table: what one `make bench` invocation measured
against each goal, read back from its result files (bench/results/<STAMP>-<name>.json).

    python3 bench/summary.py 2026-12-03-2225            # the files of that invocation
    python3 bench/summary.py --json 2026-12-03-2225      # the same rows as JSON
    python3 bench/summary.py 2026-12-03-2225 2026-12-03-2230   # sections run separately

With several stamps (sections run one at a time, e.g. `PAL=1 MINILM=0 …` then `PAL=0
MINILM=1 …`), each row comes from the last stamp that has its file.

Each row names the result file it comes from, gives palpipe's and the yardstick's medians
with their [min–max], the ratio of the medians, the goal and a verdict:

- `met` / `NOT met`: the file is quotable (no run refused for load) and the ratio meets or
  misses the goal;
- `not quotable`: a run was refused for load, so no ratio is quoted (bench/README.md, "How
  we measure", rule 6);
- `no goal`: measured beside a yardstick, nothing to meet (CLIP; parquet decoding alone,
  the floor under the hashing row);
- `not run`: the section was skipped (PAL=0, MINILM=0, …), so the file is missing.

The palpipe side of a file is its first tool in the round order (bench/run.sh lists the
build it measures first: `palpipe-mkl` where MKL is installed, else `palpipe`), never the
earlier build `BEFORE_BIN` adds as `palpipe-before`. Exit status 0 whatever the
verdicts: this prints, it does not judge a build.
"""

import argparse
import json
import os
import signal
import sys

# (file name, row label, metric, yardstick tool, goal, how the goal reads)
# kind "rate": higher is better, ratio = palpipe / yardstick ≥ goal.
# kind "time" / "memory": lower is better, ratio = palpipe / yardstick ≤ goal.
ROWS = [
    ("pal-distinct", "PAL-B train, distinct (cmp/s)", "train_comparisons_per_s", "pytorch", 1.0, "rate"),
    ("pal-distinct", "PAL-B score, distinct (cmp/s)", "eval_comparisons_per_s", "pytorch", 1.0, "rate"),
    ("pal-repeating", "PAL-B train, repeating (cmp/s)", "train_comparisons_per_s", "pytorch", 2.0, "rate"),
    ("pal-repeating", "PAL-B score, repeating (cmp/s)", "eval_comparisons_per_s", "pytorch", 2.0, "rate"),
    ("minilm", "MiniLM, persona statements (sentences/s)", "median_sentences_per_s", "sentence-transformers", 1.0, "rate"),
    ("minilm", "MiniLM peak RSS (MiB)", "peak_rss_mib", "sentence-transformers", 1.0, "memory"),
    ("clip", "CLIP tiny model, with preprocessing (images/s)", "total_images_per_s", "transformers", None, "rate"),
    ("hash", "Pick-a-Pic read + blake3 (s)", "wall_s", "b3sum", 1.5, "time"),
    # The floor under the row above: the same reader's parquet decoding alone, no hashing.
    ("hash", "  its parquet decoding alone (s)", "wall_s", "b3sum", None, "time"),
    ("ingest-100", "ingest 100 MB JSON lines (MB/s)", "mb_per_s", "reference", 0.5, "rate"),
    ("ingest-1000", "ingest 1 GB JSON lines (MB/s)", "mb_per_s", "reference", 0.5, "rate"),
]


def load(results, stamps, name):
    """The result file of section `name` from the last of `stamps` that has one (None and
    the first stamp's path when none has)."""
    for stamp in reversed(stamps):
        path = os.path.join(results, f"{stamp}-{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f), path
    return None, os.path.join(results, f"{stamps[0]}-{name}.json")


def palpipe_tool(result, label):
    """The palpipe side of a row: the build a result measures first (its first tool in the
    round order interleave.py records; the file's own keys are sorted), never an earlier
    build measured beside it (`palpipe-before`); for the decoding floor the `decode-only`
    tool."""
    if "decoding alone" in label:
        return "decode-only"
    order = result.get("order", "")
    if order.startswith("interleaved: ") and order.endswith(" in each round"):
        tools = [t.strip() for t in order[len("interleaved: "):-len(" in each round")].split(",")]
    else:
        tools = list(result.get("commands", result["stats"]).keys())
    return next(t for t in tools if t.startswith("palpipe") and t != "palpipe-before")


def row(results, stamps, spec):
    name, label, metric, yard, goal, kind = spec
    result, path = load(results, stamps, name)
    out = {"row": label, "file": os.path.basename(path), "goal": goal, "kind": kind}
    if result is None:
        return {**out, "verdict": "not run"}
    ours = palpipe_tool(result, label)
    stats = result["stats"]
    if metric not in stats.get(ours, {}) or metric not in stats.get(yard, {}):
        return {**out, "verdict": "not run"}
    a, b = stats[ours][metric], stats[yard][metric]
    ratio = a["median"] / b["median"] if b["median"] else None
    out.update(palpipe=a, yardstick=b, tool=ours, yardstick_tool=yard, ratio=ratio)
    if not result.get("quotable", False):
        out["verdict"] = "not quotable"
        out["ratio"] = None
    elif goal is None:
        out["verdict"] = "no goal"
    elif ratio is None:
        out["verdict"] = "not run"
    else:
        # A ratio at the goal meets it; 1e-9 keeps 0.3 / 0.2 = 1.4999… there.
        ok = ratio >= goal - 1e-9 if kind == "rate" else ratio <= goal + 1e-9
        out["verdict"] = "met" if ok else "NOT met"
    return out


def spread(s):
    fmt = (lambda v: f"{v:,.0f}") if s["median"] >= 100 else (lambda v: f"{v:.2f}")
    return f"{fmt(s['median'])} [{fmt(s['min'])}–{fmt(s['max'])}]"


def goal_text(r):
    if r["goal"] is None:
        return "—"
    return ("≥ " if r["kind"] == "rate" else "≤ ") + f"{r['goal']:g}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stamps", nargs="+", metavar="STAMP",
                    help="the invocation's BENCH_DATE, e.g. 2026-12-03-2225 (several: the last "
                    "that has a section's file wins)")
    ap.add_argument("--results", default="bench/results", help="folder of the result files")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends quietly
    rows = [row(args.results, args.stamps, spec) for spec in ROWS]
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return
    header = ("work", "palpipe", "yardstick", "ratio", "goal", "verdict")
    lines = []
    for r in rows:
        if "palpipe" in r:
            ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "—"
            lines.append((r["row"], spread(r["palpipe"]), f"{spread(r['yardstick'])} ({r['yardstick_tool']})",
                          ratio, goal_text(r), r["verdict"]))
        else:
            lines.append((r["row"], "—", "—", "—", goal_text(r), r["verdict"]))
    widths = [max(len(str(l[i])) for l in lines + [header]) for i in range(len(header))]
    print(f"issues 16 and 12 against their goals ({', '.join(args.stamps)}; ratio = palpipe / yardstick "
          "medians; for s and MiB lower is better)")
    for l in [header] + lines:
        print("  ".join(str(c).ljust(w) for c, w in zip(l, widths)).rstrip())
    machines = set()
    for spec in ROWS:
        result, _ = load(args.results, args.stamps, spec[0])
        if result is not None:
            m = result.get("machine", {})
            machines.add(f"{m.get('cpu')}, {m.get('nproc')} cores")
    if len(machines) == 1:
        print("machine: " + machines.pop())
    elif machines:
        print("machines: " + "; ".join(sorted(machines))
              + " (the stamps come from different machines: a ratio holds for its own row only)")


if __name__ == "__main__":
    main()
