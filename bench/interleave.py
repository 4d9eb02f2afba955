#!/usr/bin/env python3
"""Run two (or more) benchmark commands interleaved — A, B, A, B, … — and summarise them
the way bench/README.md ("How we measure") asks: the median and the spread (min, max) of
every number each tool prints, the 1-minute load average before every run, a refusal
when that load is above 1.0 + the threads the bench uses, and ratios of medians only
when no run was refused. Before each run it waits (up to `--settle` seconds) for the load
the runs before left behind to fall under that limit.

Each tool's command is a shell command that prints one JSON object on stdout (the whole
stdout, or its last line). The wrapper adds `wall_s` and `peak_rss_mib` (GNU time's
maximum resident set size of the command's process tree) to what the command prints.

    python3 bench/interleave.py --name pal-distinct --rounds 3 --threads 2 \
        --tool 'palpipe=target/debug/palpipe bench-pal --distinct' \
        --tool 'pytorch=venv/bin/python bench/pal_reference.py --distinct' \
        --metric train_comparisons_per_s --metric eval_comparisons_per_s \
        --version torch=2.5.1 --out bench/results/2026-11-30-pal-distinct.json

Exit status: 0, also when a run was refused for load (the result says so and the table
prints no ratio); 1 when a command failed or printed no JSON.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time



def cpu_model():
    """The CPU's model name (/proc/cpuinfo), or None: ratios differ between CPUs (candle's
    gemm and MKL do not gain alike from one CPU to another), so results name it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None

def parse_json(text):
    """The JSON object a command printed: all of stdout, or else its last non-empty line."""
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        lines = [l for l in text.splitlines() if l.strip()]
        if not lines:
            raise
        return json.loads(lines[-1])


def run_one(cmd, env):
    """Runs `cmd` under GNU time; returns (json, wall seconds, peak RSS MiB). Where GNU time
    is not installed (a bare GPU machine) the peak RSS is None: the tools report their own."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        has_time = os.path.exists("/usr/bin/time")
        argv = ["bash", "-c", cmd]
        if has_time:
            argv = ["/usr/bin/time", "-o", tf.name, "-f", "%M"] + argv
        t = time.perf_counter()
        p = subprocess.run(argv, stdout=subprocess.PIPE, env=env, text=True)
        wall = time.perf_counter() - t
        if p.returncode != 0:
            sys.exit(f"bench: command failed with status {p.returncode}: {cmd}")
        rss_mib = int(tf.read().split()[-1]) / 1024.0 if has_time else None
    try:
        out = parse_json(p.stdout)
    except (json.JSONDecodeError, ValueError):
        sys.exit(f"bench: command printed no JSON object: {cmd}\n{p.stdout[-2000:]}")
    return out, wall, rss_mib


def numbers(obj, prefix=""):
    """Flattens the numeric leaves of a JSON object to {"a.b": value}."""
    out = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[key] = float(v)
        elif isinstance(v, dict):
            out.update(numbers(v, key + "."))
    return out


def summary(values):
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def settle(limit, most):
    """Waits (polling every 2 s) until the 1-minute load average is at most `limit`, for at
    most `most` seconds; returns the seconds waited. The runs of a long benchmark raise the
    load average themselves (14 s of both cores lift it past 3 on 2 vCPUs, and it decays
    with a one-minute time constant), so without a pause the next run would start loaded by
    the one before it."""
    start = time.monotonic()
    while os.getloadavg()[0] > limit and time.monotonic() - start < most:
        time.sleep(2.0)
    return time.monotonic() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True, help="what is measured (a word)")
    ap.add_argument("--tool", action="append", required=True, metavar="NAME=COMMAND")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="threads the bench uses")
    ap.add_argument("--metric", action="append", default=[],
                    help="a printed number to put in the table (higher is better)")
    ap.add_argument("--version", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", required=True)
    ap.add_argument("--settle", type=float, default=120.0, metavar="SECONDS",
                    help="before a run, wait up to this long for the load average to fall "
                         "to the limit (a long run leaves its own load behind); a run that "
                         "starts above it still counts as refused (default 120)")
    args = ap.parse_args()
    if args.rounds < 3:
        print("bench: fewer than 3 rounds; the result is marked not quotable", file=sys.stderr)

    tools = []
    for t in args.tool:
        name, _, cmd = t.partition("=")
        if not cmd:
            sys.exit(f"bench: --tool must be NAME=COMMAND, got {t!r}")
        tools.append((name, cmd))
    limit = 1.0 + args.threads
    env = dict(os.environ)

    runs = {name: [] for name, _ in tools}
    refusals = []
    for r in range(args.rounds):
        for name, cmd in tools:
            waited = settle(limit, args.settle)
            load = os.getloadavg()
            if load[0] > limit:
                refusals.append(f"round {r + 1}, {name}: load average {load[0]:.2f} > {limit:.1f}")
            print(f"== {args.name}: round {r + 1}/{args.rounds}, {name} (load {load[0]:.2f})",
                  file=sys.stderr)
            out, wall, rss = run_one(cmd, env)
            runs[name].append({"round": r + 1, "load_before": list(load), "wall_s": wall,
                               "peak_rss_mib": rss, "printed": out,
                               "settled_s": round(waited, 1)})

    stats = {}
    for name, rs in runs.items():
        flat = [numbers(x["printed"]) for x in rs]
        keys = set.intersection(*(set(f) for f in flat))
        per = {k: summary([f[k] for f in flat]) for k in sorted(keys)}
        per["wall_s"] = summary([x["wall_s"] for x in rs])
        if all(x["peak_rss_mib"] is not None for x in rs):
            per["peak_rss_mib"] = summary([x["peak_rss_mib"] for x in rs])
        stats[name] = per

    quotable = not refusals and args.rounds >= 3
    first = tools[0][0]
    ratios = {}
    for other, _ in tools[1:]:
        for m in args.metric:
            a, b = stats[first].get(m), stats[other].get(m)
            if a and b and b["median"]:
                ratios[f"{first}/{other} {m}"] = a["median"] / b["median"]

    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True).stdout.strip()
    result = {
        "name": args.name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "platform": platform.platform(),
                    "loadavg_limit": limit},
        "versions": dict(v.split("=", 1) for v in args.version) | {"palpipe_commit": git},
        "commands": {name: cmd for name, cmd in tools},
        "rounds": args.rounds,
        "order": "interleaved: " + ", ".join(n for n, _ in tools) + " in each round",
        "quotable": quotable,
        "refused": refusals,
        "runs": runs,
        "stats": stats,
        "ratio_of_medians": ratios if quotable else {},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2, sort_keys=True)
        fh.write("\n")

    width = max(len(m) for m in args.metric + ["peak_rss_mib"])
    head = "".join(f" {n:>24}" for n, _ in tools)
    print(f"{args.name}: median [min–max] over {args.rounds} interleaved rounds")
    print(f"{'':<{width}}{head}   ratio")
    for m in args.metric + ["peak_rss_mib"]:
        cells = ""
        for n, _ in tools:
            s = stats[n].get(m)
            cells += f" {s['median']:>10.1f} [{s['min']:.0f}–{s['max']:.0f}]".rjust(25) if s else f" {'—':>24}"
        ratio = ratios.get(f"{first}/{tools[1][0]} {m}") if len(tools) > 1 else None
        rtxt = f"{ratio:.2f}" if (ratio is not None and quotable and m != "peak_rss_mib") else ""
        print(f"{m:<{width}}{cells}   {rtxt}")
    if len(tools) > 1:
        print(f"ratio = {first} median / {tools[1][0]} median (for times in ms, above 1 is slower)")
    for other, _ in (tools[2:] if quotable else []):
        cells = [f"{m} {ratios[f'{first}/{other} {m}']:.2f}" for m in args.metric
                 if f"{first}/{other} {m}" in ratios]
        if cells:
            print(f"{first} / {other}: " + ", ".join(cells))
    loads = [x["load_before"][0] for rs in runs.values() for x in rs]
    print(f"load average before runs: {min(loads):.2f}–{max(loads):.2f} (limit {limit:.1f}); "
          f"written {args.out}")
    if not quotable:
        why = "; ".join(refusals) if refusals else "fewer than 3 rounds"
        print(f"NOT QUOTABLE ({why}): no ratio printed", file=sys.stderr)
        print("NOT QUOTABLE: no ratio printed")


if __name__ == "__main__":
    main()
