#!/usr/bin/env python3
"""The CLIP image yardstick of issue 16: Hugging Face `transformers` CLIPModel with
CLIPImageProcessor, on the same tiny fixture model `palpipe bench-clip` runs
(tests/fixtures/tiny_clip), timed the same way: JPEG decode (Pillow), resize / centre crop /
normalise (CLIPImageProcessor), and the model's image features, batch by batch, each timed
apart. Prints one JSON object with the keys `palpipe bench-clip` prints, for
bench/interleave.py.

The images follow `palpipe bench-clip`'s recipe (a seeded two-colour diagonal gradient, four
soft discs, noise; each side drawn from 7/8..9/8 of --size; JPEG quality 90), generated here
with NumPy and Pillow: the same sizes and kind of content, not the same bytes.

    python3 bench/clip_reference.py --images 2000 --size 256 --batch 64 --threads 2
"""

import argparse
import io
import json
import resource
import time

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPModel


def synthetic_jpeg(rng, w, h, quality):
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    t = ((x + y) / (w + h))[..., None]
    p = c0 * (1 - t) + c1 * t
    for _ in range(4):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rad = rng.uniform(8, max(min(w, h) / 3, 9))
        col = rng.uniform(0, 255, 3)
        d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        a = np.clip(1 - np.maximum(d - rad, 0) / 4, 0, 1)[..., None]
        p = p * (1 - a) + col * a
    p = p + rng.uniform(-12, 12, (h, w, 1))
    img = Image.fromarray(np.clip(p, 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model-dir", default="tests/fixtures/tiny_clip")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    t = time.perf_counter()
    model = CLIPModel.from_pretrained(a.model_dir).eval()
    side = model.config.vision_config.image_size
    proc = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    load_s = time.perf_counter() - t

    rng = np.random.default_rng(a.seed)
    lo, hi = a.size * 7 // 8, a.size * 9 // 8
    t = time.perf_counter()
    jpegs = [synthetic_jpeg(rng, int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1)), a.quality)
             for _ in range(a.images)]
    gen_s = time.perf_counter() - t

    def decode(b):
        return Image.open(io.BytesIO(b)).convert("RGB")

    with torch.inference_mode():  # warm-up batch
        model.get_image_features(**proc(images=[decode(b) for b in jpegs[:a.batch]], return_tensors="pt"))
        decode_s = preprocess_s = model_s = 0.0
        n = 0
        dim = None
        for i in range(0, len(jpegs), a.batch):
            t = time.perf_counter()
            imgs = [decode(b) for b in jpegs[i:i + a.batch]]
            decode_s += time.perf_counter() - t
            t = time.perf_counter()
            pixels = proc(images=imgs, return_tensors="pt")
            preprocess_s += time.perf_counter() - t
            t = time.perf_counter()
            v = model.get_image_features(**pixels)
            model_s += time.perf_counter() - t
            if not isinstance(v, torch.Tensor):  # newer transformers return an output object
                v = v.pooler_output if getattr(v, "pooler_output", None) is not None else v[0]
            n += v.shape[0]
            dim = v.shape[-1]
    prep_s = decode_s + preprocess_s
    print(json.dumps({
        "tool": "transformers",
        "what": "CLIP image embedding: Pillow decode + CLIPImageProcessor and CLIPModel.get_image_features, timed apart",
        "image_size": side, "dim": dim, "images": n, "nominal_side": a.size, "batch": a.batch,
        "decode_images_per_s": n / decode_s,
        "resize_crop_normalise_images_per_s": n / preprocess_s,
        "preprocess_images_per_s": n / prep_s,
        "model_images_per_s": n / model_s,
        "total_images_per_s": n / (prep_s + model_s),
        "seconds": {"decode": decode_s, "resize_crop_normalise": preprocess_s, "model": model_s,
                    "model_load": load_s, "generate_jpegs": gen_s},
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "threads": a.threads,
    }))


if __name__ == "__main__":
    main()
