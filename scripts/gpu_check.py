"""The GPU check of the embedding pipeline: one short script to run on a machine with a GPU.

    HF_HUB_OFFLINE=1 python scripts/gpu_check.py [--docs 20000] [--batch 1024] [--out F.json]

Embeds ``--docs`` demo-catalog product texts (indexing.demo_catalog, ~70 word-piece tokens)
with the batched fp16 pipeline on CUDA (indexing.batch_encode: length buckets, a tokenizer
thread feeding the device), after one warm-up pass, and prints docs/s end to end, the GPU
name, the CPU, and the cosine of ``--check`` of those vectors to sentence-transformers'
torch float32 vectors on the CPU (target: docs/s >= 20,000 on an H200-class GPU, cosine
min >= 0.999). Exits 1 when no CUDA device is visible or the cosine is below 0.999.
Nothing is downloaded: the model is the packaged all-MiniLM-L6-v2. Runs in about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")  # the feeder thread's batches

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--check", type=int, default=500, help="texts compared with the CPU")
    p.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run)")
    p.add_argument("--out", help="write the results as JSON")
    args = p.parse_args(argv)

    import torch
    from sentence_transformers import SentenceTransformer

    from indexing.batch_encode import BatchPipeline
    from indexing.demo_catalog import generate_products
    from indexing.encoders import cpu_description, default_model_path

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device", file=sys.stderr)
        return 1
    products = generate_products(args.docs, 42)
    texts = [f"{p.title}\n{p.text}" for p in products]
    model = SentenceTransformer(default_model_path(), device="cpu")
    pipe = BatchPipeline(model, args.device, args.batch)
    pipe.encode(texts[: min(len(texts), 4 * args.batch)])  # warm-up: kernels, allocator
    if args.device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    vecs = pipe.encode(texts)
    secs = time.perf_counter() - t0
    n_check = min(args.check, len(texts))
    ref = SentenceTransformer(default_model_path(), device="cpu").encode(
        texts[:n_check], normalize_embeddings=True, convert_to_numpy=True, batch_size=64
    )
    cos = np.sum(vecs[:n_check] * ref, axis=1)
    res = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "cpu": cpu_description(),
        "torch": torch.__version__,
        "docs": len(texts),
        "batch": args.batch,
        "dtype": str(pipe.dtype),
        "seconds": round(secs, 2),
        "docs_per_s": round(len(texts) / secs, 1),
        "cosine_vs_cpu_float32": {
            "min": round(float(cos.min()), 5),
            "mean": round(float(cos.mean()), 5),
        },
    }
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0 if cos.min() >= 0.999 else 1


if __name__ == "__main__":
    sys.exit(main())
