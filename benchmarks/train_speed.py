"""Does torch.compile (with or without CUDA graphs) / bf16 autocast pay for the lab's training step? One arm alone
on the device, each setting.

    python benchmarks/train_speed.py --out speed.jsonl --steps 80 --arms default attn_bias -- --d-model 512 ...

Prints and appends one JSON line per (arm, compile, amp): tokens/s (steps 10.. timed, after warm-up and
compilation), MFU against the H200's dense bf16 peak, and the warm-up seconds (compilation included).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    argv = sys.argv[1:]
    own, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--arms", nargs="+", default=["default"])
    p.add_argument("--settings", nargs="+", default=["compile+amp", "amp", "fp32"],
                   help="compile+amp, graphs+amp (torch.compile's reduce-overhead: CUDA graphs), amp, fp32")
    args = p.parse_args(own)
    q = argparse.ArgumentParser()
    for name in ("d-model", "n-layers", "n-heads", "n-ctx", "batch-size"):
        q.add_argument(f"--{name}", type=int)
    q.add_argument("--data")
    shape = {k: v for k, v in vars(q.parse_args(extra)).items() if v is not None}

    import torch

    from mi_massive.train import data as _data
    from mi_massive.train.lab import LabSpec, load_data, train_arm

    if shape.get("data") in _data.SYNTHETIC:
        shape["vocab_size"] = _data.SYNTHETIC_VOCAB
    spec = LabSpec(steps=args.steps, eval_every=args.steps, warmup=10, eval_windows=2, val_windows=2, **shape)
    tok = _data.tokenizer_of(spec.tokenizer)
    td = load_data(spec, tok)
    for arm in args.arms:
        for setting in args.settings:
            t0 = time.time()
            rec = train_arm(arm, spec, token_data=td, tokenizer=tok, out_dir=None,
                            compile="reduce-overhead" if "graphs" in setting else "compile" in setting,
                            amp="amp" in setting, progress=False)
            row = {"arm": arm, "setting": setting, "tokens_per_s": rec["tokens_per_s"], "mfu": rec["mfu"],
                   "warmup_s": rec["warmup_s"], "wall_s": time.time() - t0, "spec": shape, "steps": args.steps,
                   "device": rec["device"], "torch": torch.__version__, "n_params": rec["n_params"],
                   "flops_per_token": rec["flops_per_token"]}
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
