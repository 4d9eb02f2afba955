#!/usr/bin/env python3
"""Enrolment measured on stored users (issue 14; docs/results/adapt-2026-12-01.md).

Enrols every user of the pairs that SPLIT_SQL_WHERE selects with `palpipe enroll --model MODEL`
once per setting (LABEL=EXTRA_ARGS, e.g. `auto=` or `empirical=--estimator empirical`), each
user's comparisons given as {"id"} lines in stored order, and prints one JSON line per
setting: users with a held-out part (>= 10 comparisons), held-out comparisons, the held-out
accuracy pooled and averaged over users (enrolment holds out a seeded fifth and scores a fit on
the rest), and the settings the first user was fitted with. Enrolled ids are
`demo-<LABEL>-<i>`: run it on a copy of a store you keep.

usage: scripts/enroll_heldout.py BIN STORE MODEL SPLIT_SQL_WHERE LABEL=ARGS...
  scripts/enroll_heldout.py palpipe st pal-b-k4 "split = 'unseen'" auto= "empirical=--estimator empirical"
"""
import json, subprocess, sys, collections, tempfile, os
bin_, store, model, where = sys.argv[1:5]
settings = [a.split("=", 1) for a in sys.argv[5:]]
def sql(q):
    out = subprocess.run([bin_, "--store", store, "sql", q, "--format", "json"], check=True,
                         capture_output=True, text=True).stdout
    return [json.loads(l) for l in out.splitlines() if l.strip()]
rows = sql(f"SELECT * FROM pairs WHERE {where} ORDER BY user_id, pair_id")
by = collections.OrderedDict()
for r in rows:
    by.setdefault(r["user_id"], []).append(r)
res = {k: [] for k, _ in settings}
tmp = tempfile.mkdtemp()
for i, (u, ps) in enumerate(by.items()):
    f = os.path.join(tmp, f"u{i}.jsonl")
    with open(f, "w") as fh:
        for p in ps:
            c, r = ("left_id", "right_id") if p["label"] == -1 else ("right_id", "left_id")
            line = {"chosen": {"id": p[c]}, "rejected": {"id": p[r]}}
            if p.get("prompt_id"):
                line["prompt"] = {"id": p["prompt_id"]}
            fh.write(json.dumps(line) + "\n")
    for k, a in settings:
        out = subprocess.run([bin_, "--store", store, "enroll", "--model", model, "--user",
                              f"demo-{k}-{i}", "--comparisons", f, "--json", "-q"] + a.split(),
                             check=True, capture_output=True, text=True).stdout
        o = json.loads(out)
        if o.get("held_out_accuracy") is not None:
            res[k].append((o["held_out"], o["held_out_accuracy"], o["estimator"], o.get("chosen_by"), o.get("prior_scale"), o.get("ridge")))
for k, v in res.items():
    n = sum(h for h, *_ in v)
    micro = sum(h * a for h, a, *_ in v) / n
    macro = sum(a for _, a, *_ in v) / len(v)
    print(json.dumps({"setting": k, "users": len(v), "held_out": n, "mean_over_users": round(100 * macro, 2),
                      "pooled": round(100 * micro, 2), "estimator": v[0][2], "chosen_by": v[0][3],
                      "prior_scale": v[0][4], "ridge": v[0][5]}))
