#!/usr/bin/env python3
"""Rewards of a palpipe PAL checkpoint, computed with NumPy alone (numpy + safetensors).

An independent reading of docs/checkpoint.md: it loads `weights.safetensors` and `card.json`
from a checkpoint folder and computes r_i(x; x_c) for vectors given on stdin, one JSON object
per line:

    {"user": "u17", "prompt": [..Dp floats..] or null, "candidates": [[..Dx floats..], ...]}

"user" is a seen user's id, or null for the zero-shot mixture (the mean of the seen users'
mixtures); "logits": [..K..] instead gives an enrolled user's fitted logits (the
`enrollments` table's logits_json) and "mixture": [..K..] a mixture directly; "offset":
[..D..] (the table's offset_json, from the offset estimator) is added to the user's ideal
point: to z = sum_k w_k g_k(x_c) before it is normalised (PAL-B, D = d), or to a = sum_k w_k P_k
(PAL-A, D = Dp + Dx). Prints one line {"rewards": [...]} per input line. Higher is preferred.

    python3 scripts/pal_reference_score.py palstore/models/pal-b-k4 < rows.jsonl
"""

import json
import math
import sys

import numpy as np
from safetensors.numpy import load_file

_erf = np.vectorize(math.erf)
EPS2 = 1e-16  # added under square roots, as palpipe does


def parse_arch(arch):
    """'mlp2-gelu-dropout0[-residual]' -> (activation, residual). Dropout is off at scoring."""
    parts = arch.split("-")
    return parts[1], len(parts) > 3 and parts[3] == "residual"


def activate(h, act):
    if act == "relu":
        return np.maximum(h, 0.0)
    if act == "gelu":  # the exact (erf) form
        return 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))
    return h  # linear


def mlp(weights, prefix, arch, x):
    """Linear layers prefix.0, prefix.1, ...: y = x W^T + b, the activation after every
    layer but the last; the input added to the output when residual."""
    act, residual = parse_arch(arch)
    n = 0
    while f"{prefix}.{n}.weight" in weights:
        n += 1
    h = x
    for i in range(n):
        h = h @ weights[f"{prefix}.{i}.weight"].T + weights[f"{prefix}.{i}.bias"]
        if i < n - 1:
            h = activate(h, act)
    return x + h if residual else h


def unit_rows(x):
    return x / np.sqrt((x * x).sum(axis=-1, keepdims=True) + EPS2)


def eval_mixture(cfg, logits):
    """softmax(W / T) per row, or the one-hot argmax in partition mode."""
    logits = np.atleast_2d(logits)
    if cfg["mode"] == "partition":
        out = np.zeros_like(logits)
        out[np.arange(len(logits)), logits.argmax(axis=1)] = 1.0
        return out
    z = logits / cfg["temperature"]
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def rewards(weights, card, w, prompt, cands, offset=None):
    cfg = card["model"]
    x = np.asarray(cands, dtype=np.float64)  # [n, Dx]
    if cfg["kind"] == "pal-b":
        fx = unit_rows(mlp(weights, "f", cfg["item_arch"], x))  # [n, d]
        if cfg["dp"] > 0:
            xc = np.asarray(prompt, dtype=np.float64)[None, :]  # [1, Dp]
            g = np.stack(
                [mlp(weights, f"g.{k}", cfg["prototype_arch"], xc)[0] for k in range(cfg["k"])]
            )  # [K, d]
        else:
            g = weights["g_vectors"]  # [K, d]
        z = w @ g  # [d]
        if offset is not None:
            z = z + offset
        z = unit_rows(z)
        s = min(math.exp(float(weights["tau"][0])), 100.0)
        return s * (fx @ z)
    # pal-a
    if cfg["dp"] > 0:
        xc = np.asarray(prompt, dtype=np.float64)
        x = np.concatenate([np.repeat(xc[None, :], len(x), axis=0), x], axis=1)  # [n, Dp+Dx]
    fx = mlp(weights, "f", cfg["item_arch"], x)
    a = w @ weights["prototypes"]  # [Dp+Dx]
    if offset is not None:
        a = a + offset
    fa = mlp(weights, "f", cfg["item_arch"], a[None, :])[0]
    sq = ((fx - fa) ** 2).sum(axis=1)
    return -(sq if cfg["distance"] == "squared" else np.sqrt(sq + EPS2))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: pal_reference_score.py CHECKPOINT_DIR < rows.jsonl")
    folder = sys.argv[1]
    weights = {k: v.astype(np.float64) for k, v in load_file(f"{folder}/weights.safetensors").items()}
    with open(f"{folder}/card.json") as f:
        card = json.load(f)
    cfg = card["model"]
    table = eval_mixture(cfg, weights["user_logits"]) if card["users"] else None
    for line in sys.stdin:
        if not line.strip():
            continue
        row = json.loads(line)
        if "mixture" in row:
            w = np.asarray(row["mixture"], dtype=np.float64)
        elif "logits" in row:
            w = eval_mixture(cfg, np.asarray(row["logits"], dtype=np.float64))[0]
        elif row.get("user") is None:
            w = table.mean(axis=0) if table is not None else np.full(cfg["k"], 1.0 / cfg["k"])
        else:
            w = table[card["users"][row["user"]]]
        offset = row.get("offset")
        if offset is not None:
            offset = np.asarray(offset, dtype=np.float64)
            want = cfg["d"] if cfg["kind"] == "pal-b" else cfg["dp"] + cfg["dx"]
            if offset.shape != (want,):
                sys.exit(f"offset: {offset.shape[0]} values, the model needs {want}")
        r = rewards(weights, card, w, row.get("prompt"), row["candidates"], offset)
        print(json.dumps({"rewards": [float(v) for v in r]}))


if __name__ == "__main__":
    main()
