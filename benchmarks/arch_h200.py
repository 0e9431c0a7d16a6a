"""The GPU ratios of RESULTS.md measured again after the engine moved behind its wall (issue 18), with no model
wheel to carry: scans of randomly initialised LLaMAs of the 1.1B's and smollm2's shapes, each with a planted
massive activation, against bare HF forwards of the same tokens; trace_origin and path patching on the planted
smollm2-shaped model (character tokens), in forward-equivalents.

    python benchmarks/arch_h200.py --device cuda --out benchmarks/raw/arch_h200.jsonl
    python benchmarks/arch_h200.py --device cpu --prompts 4 --seq 32 --repeat 1 --shapes smollm2   # a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (bench_origin, bench_patching, bench_scan, planted_llama, random_tokens,  # noqa: E402
                   scans_agree)

PLANTS = {"1.1b": 1234, "smollm2": 123}  # the planted dimension of each shape
PROMPT = "Summer is warm. Winter is cold. The quick brown fox jumps over the lazy dog."


def planted(shape: str, device: str, dtype: torch.dtype):
    """A random LLaMA of `shape` with a massive activation planted at BOS (bench.planted_llama)."""
    return planted_llama(shape, device, dtype, dim=PLANTS[shape])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeat", type=int, default=9)
    p.add_argument("--patch-batch", type=int, default=512)
    p.add_argument("--shapes", nargs="*", default=["1.1b", "smollm2"])
    p.add_argument("--skip", nargs="*", default=[], help="origin patch")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    from mi_massive import engine, find_massive_activations

    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.node(),
            "device": args.device, "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
            "command": " ".join(["arch_h200.py", *(argv if argv is not None else sys.argv[1:])]),
            "torch": torch.__version__, "settings": vars(engine.settings)}
    records = []

    def emit(rec: dict) -> None:
        rec = {**meta, **rec}
        records.append(rec)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items() if k not in meta}),
              flush=True)

    for shape in args.shapes:
        for dtype in (torch.bfloat16, torch.float32):
            model = planted(shape, args.device, dtype)
            toks = random_tokens(args.prompts, args.seq, model.cfg.d_vocab, model.tokenizer.bos_token_id, low=3)
            rec = bench_scan(model, toks, args.device, batch_size=args.batch_size, repeat=args.repeat,
                             label=f"random-{shape} planted {str(dtype).split('.')[-1]}")
            rec["planted_found"] = PLANTS[shape] in find_massive_activations(model, toks[:2]).dims
            if args.device.startswith("cuda"):  # Triton's statistics and the sort's must agree to the bit
                rec["triton_same_result_as_sort"] = scans_agree(model, toks[:8], 4, engine.settings, "cuda_stats",
                                                                ("triton", "sort"))
            emit(rec)
            del model
    if "origin" not in args.skip or "patch" not in args.skip:
        model = planted("smollm2", args.device, torch.float32)
        if "origin" not in args.skip:
            emit({**bench_origin(model, PROMPT, args.device), "model": "random-smollm2 planted float32"})
        if "patch" not in args.skip:
            emit({**bench_patching(model, PROMPT, args.device, batch_size=args.patch_batch),
                  "model": "random-smollm2 planted float32"})
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
