"""Data-parallel scan throughput: `find_massive_activations` over a token corpus under torchrun, each rank on its
own shard (mi_massive._dist), against the same scan in one process. Rank 0 writes one JSON record: world size,
tokens, seconds, tokens/s, and a digest of the merged hits (equal digests = identical hits).

    torchrun --standalone --nproc-per-node 2 benchmarks/dist_scan.py --shape 1.1b --dtype bfloat16 \\
        --prompts 20480 --seq 512 --out benchmarks/raw/dist_scan.jsonl       # 10.5M tokens, a 1.1B LLaMA
    python benchmarks/dist_scan.py --shape tiny --device cpu --prompts 8 --seq 16 --out /tmp/d.jsonl   # a smoke run

The model is a randomly initialised LLaMA (bench.LLAMA_SHAPES) with a massive activation planted at BOS, so
nothing needs to be downloaded; `--shape tiny` is mi_massive.testing's tiny LLaMA.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def build(shape: str, device: str, dtype: torch.dtype):
    from mi_massive.testing import tiny_model

    if shape == "tiny":
        return tiny_model("llama").to(device)
    from bench import planted_llama

    return planted_llama(shape, device, dtype, dim=123)


def digest(acts) -> str:
    rows = torch.stack([acts.prompt, acts.layer, acts.pos, acts.dim]).T.contiguous().numpy().tobytes()
    return hashlib.sha256(rows).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="1.1b", help="tiny, smollm2 or 1.1b")
    p.add_argument("--device", default=None, help="default: this rank's GPU, else the CPU")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from bench import random_tokens

    from mi_massive import _dist, find_massive_activations

    rank, world = _dist.world()
    device = args.device or str(_dist.local_device() or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build(args.shape, device, getattr(torch, args.dtype))
    tok = model.tokenizer
    toks = random_tokens(args.prompts, args.seq, model.cfg.d_vocab, tok.bos_token_id, low=3)
    find_massive_activations(model, toks[: max(1, world) * 2], batch_size=args.batch_size)  # warm-up (all ranks)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    acts = find_massive_activations(model, toks, batch_size=args.batch_size)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = max(_dist.gather(time.perf_counter() - t0))  # the slowest rank
    if _dist.is_main():
        n_tok = args.prompts * args.seq
        rec = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
            "command": " ".join(sys.argv), "world": world, "backend": _dist.backend(), "shape": args.shape,
            "dtype": args.dtype, "n_params": sum(q.numel() for q in model.original_model.parameters()),
            "tokens": n_tok, "seconds": seconds, "tokens_per_s": n_tok / seconds, "hits": len(acts),
            "dims": acts.dims[:5], "hits_digest": digest(acts),
        }
        print(json.dumps(rec))
        with open(args.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
