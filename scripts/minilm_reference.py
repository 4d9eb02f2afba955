#!/usr/bin/env python3
"""Independent numpy reference for all-MiniLM-L6-v2 sentence embeddings.

Writes tests/fixtures/minilm/expected.json, which the Rust parity test in
src/embed/minilm.rs compares candle's vectors against. Nothing here shares code
with candle: safetensors are read by a small hand parser, the BERT forward pass
is written out in numpy (float64), following HF transformers' modeling_bert.py
and sentence-transformers' Transformer -> Pooling(mean) -> Normalize modules.

Tokenisation uses the `tokenizers` package with the model's own tokenizer.json,
one sentence at a time (no padding), truncated to 256 tokens as
sentence_bert_config.json says (tokenizer.json itself ships with 128).

Usage:
    python3 -m venv /tmp/mlref && /tmp/mlref/bin/pip install numpy tokenizers
    /tmp/mlref/bin/python scripts/minilm_reference.py [MODEL_DIR] [OUT_JSON]

MODEL_DIR defaults to $PALPIPE_MODELS/all-MiniLM-L6-v2, else
~/.cache/palpipe/models/all-MiniLM-L6-v2.
"""

import json
import math
import os
import struct
import sys

import numpy as np
from tokenizers import Tokenizer

MAX_LEN = 256

LONG_OVER_128 = (
    "When I was a child my grandmother took me every Sunday to the small museum at the end of "
    "her street, where we would sit for hours in front of the same three paintings, a stormy "
    "seascape, a portrait of a tired merchant and a still life of lemons, and she would ask me "
    "what I saw in them, what the painter had been feeling, why the light fell the way it did, "
    "and whether I thought the merchant had ever been happy; years later, having studied "
    "economics, worked in a bank, moved across three countries and raised two children of my "
    "own, I still find that the habit she gave me, of slowing down in front of a picture and "
    "asking it questions, is the one thing that reliably makes me feel calm, curious and "
    "connected to people I will never meet, which is why I now volunteer as a guide on weekends."
)

LONG_OVER_256 = (
    "The committee reviewed the proposal in detail, noting that the budget for the new "
    "community centre included funding for a library, a gymnasium, a small theatre, several "
    "classrooms for evening courses, a kitchen that could serve meals to elderly residents, a "
    "garden maintained by volunteers, and a workshop where young people could learn carpentry, "
    "welding, electronics repair and bicycle maintenance from retired tradespeople; however, "
    "several members raised concerns about the long-term maintenance costs, the availability of "
    "public transport to the proposed site, the accessibility of the upper floors for people "
    "using wheelchairs, the noise that evening events might cause for neighbouring households, "
    "and the question of whether the council could guarantee staffing beyond the first three "
    "years, after which the initial grant would expire and the centre would need to rely on "
    "membership fees, room rentals, donations and whatever additional support the regional "
    "government might be willing to provide; after a long discussion the committee agreed to "
    "commission an independent feasibility study, to hold two public consultations in the "
    "spring, to invite written submissions from local schools, charities and businesses, and "
    "to return to the matter at its autumn meeting with a revised plan that addressed each of "
    "the concerns raised, together with a realistic estimate of running costs over ten years, "
    "a timetable for construction, a list of possible architects, and a summary of similar "
    "projects that neighbouring towns had completed, abandoned or postponed in the past decade."
)

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "A cat sits on the mat.",
    "I enjoy going to art museums to contemplate the works of great artists like Picasso and Monet",
    "I have no interest in art and avoid visiting museums or art galleries whenever possible",
    "I believe it is important to always tell the truth, even when it is uncomfortable",
    "I would rather spend my weekend hiking in the mountains than watching television",
    "Café déjà vu: naïve façades & résumés — 東京 2024!",
    "x",
    LONG_OVER_128,
    LONG_OVER_256,
]


def model_dir_default():
    root = os.environ.get("PALPIPE_MODELS") or os.path.join(
        os.path.expanduser("~"), ".cache", "palpipe", "models"
    )
    return os.path.join(root, "all-MiniLM-L6-v2")


def read_safetensors(path):
    """Hand parser: u64 little-endian header length, JSON header, raw little-endian data."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    base = 8 + n
    dtypes = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8"}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        arr = np.frombuffer(blob[base + start : base + end], dtype=dtypes[info["dtype"]])
        out[name] = arr.reshape(info["shape"]).astype(np.float64)
    return out


_erf = np.frompyfunc(math.erf, 1, 1)


def gelu(x):
    # exact GELU, as HF "gelu": 0.5 x (1 + erf(x / sqrt 2))
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def dense(x, W, b):
    # torch Linear: y = x W^T + b, W is [out, in]
    return x @ W.T + b


def softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def bert_forward(W, cfg, ids):
    """One unpadded sequence: ids [L] -> hidden states [L, H]."""
    L = len(ids)
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    hd = H // nh
    eps = cfg["layer_norm_eps"]
    p = "" if "embeddings.word_embeddings.weight" in W else "bert."
    x = (
        W[p + "embeddings.word_embeddings.weight"][ids]
        + W[p + "embeddings.position_embeddings.weight"][np.arange(L)]
        + W[p + "embeddings.token_type_embeddings.weight"][np.zeros(L, dtype=int)]
    )
    x = layer_norm(x, W[p + "embeddings.LayerNorm.weight"], W[p + "embeddings.LayerNorm.bias"], eps)
    for i in range(cfg["num_hidden_layers"]):
        q = f"{p}encoder.layer.{i}."
        Q = dense(x, W[q + "attention.self.query.weight"], W[q + "attention.self.query.bias"])
        K = dense(x, W[q + "attention.self.key.weight"], W[q + "attention.self.key.bias"])
        V = dense(x, W[q + "attention.self.value.weight"], W[q + "attention.self.value.bias"])
        Q = Q.reshape(L, nh, hd).transpose(1, 0, 2)  # [nh, L, hd]
        K = K.reshape(L, nh, hd).transpose(1, 0, 2)
        V = V.reshape(L, nh, hd).transpose(1, 0, 2)
        A = softmax(Q @ K.transpose(0, 2, 1) / math.sqrt(hd))  # [nh, L, L]
        C = (A @ V).transpose(1, 0, 2).reshape(L, H)
        a = dense(C, W[q + "attention.output.dense.weight"], W[q + "attention.output.dense.bias"])
        x = layer_norm(a + x, W[q + "attention.output.LayerNorm.weight"],
                       W[q + "attention.output.LayerNorm.bias"], eps)
        h = gelu(dense(x, W[q + "intermediate.dense.weight"], W[q + "intermediate.dense.bias"]))
        o = dense(h, W[q + "output.dense.weight"], W[q + "output.dense.bias"])
        x = layer_norm(o + x, W[q + "output.LayerNorm.weight"], W[q + "output.LayerNorm.bias"], eps)
    return x


def main():
    model_dir = sys.argv[1] if len(sys.argv) > 1 else model_dir_default()
    here = os.path.dirname(os.path.abspath(__file__))
    out_path = sys.argv[2] if len(sys.argv) > 2 else os.path.normpath(
        os.path.join(here, "..", "tests", "fixtures", "minilm", "expected.json")
    )
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    assert cfg["hidden_act"] == "gelu", cfg["hidden_act"]
    W = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_LEN)

    vectors, lengths = [], []
    for s in SENTENCES:
        enc = tok.encode(s)
        ids = np.array(enc.ids, dtype=int)
        hs = bert_forward(W, cfg, ids)
        v = hs.mean(0)  # mean pooling; every token is real (no padding)
        v = v / np.linalg.norm(v)
        vectors.append(v)
        lengths.append(len(ids))
        print(f"{len(ids):4d} tokens  {s[:60]!r}", file=sys.stderr)

    cos = float(vectors[0] @ vectors[1])
    print(f"cosine({SENTENCES[0]!r}, {SENTENCES[1]!r}) = {cos:.6f}", file=sys.stderr)

    doc = {
        "model": "all-MiniLM-L6-v2",
        "max_length": MAX_LEN,
        "generator": "scripts/minilm_reference.py (numpy float64, independent of candle)",
        "cosine_0_1": round(cos, 7),
        "items": [
            {"sentence": s, "tokens": n, "vector": [round(float(x), 7) for x in v]}
            for s, n, v in zip(SENTENCES, lengths, vectors)
        ],
    }
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {out_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
