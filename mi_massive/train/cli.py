"""`mi-massive train`: the argparse of the training lab (cli.py adds it; nothing heavy is imported before it runs)."""

from __future__ import annotations

import argparse
from typing import Any

ARMS = ("default", "sink_token", "attn_bias", "softmax1", "sigmoid", "gated")  # modeling.VARIANTS
DATA = ("wiki-en+lee-news", "wiki-en", "lee-news", "copy")


def add_train_command(sub: Any, positive_int: Any) -> None:
    p = sub.add_parser("train", help="train small LMs from scratch, one per attention variant, and watch massive "
                                     "activations emerge")
    p.add_argument("--arms", nargs="+", default=["default", "sink_token", "attn_bias", "softmax1", "gated"],
                   choices=ARMS, help="attention variants, one model each (default: all but sigmoid)")
    p.add_argument("--data", default="wiki-en+lee-news", choices=DATA, help="token data (default: offline English)")
    for name, default, what in (("d-model", 256, "residual width"), ("n-layers", 8, "blocks"),
                                ("n-heads", 4, "heads per block"), ("n-ctx", 128, "tokens per window"),
                                ("batch-size", 32, "windows per step"), ("steps", 1000, "optimizer steps"),
                                ("eval-every", 100, "steps between scans"), ("warmup", 100, "warm-up steps"),
                                ("seed", 0, "seed of the init and the data order")):
        p.add_argument(f"--{name}", type=positive_int if name != "seed" else int, default=default,
                       help=f"{what} (default {default})")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--out", default=None, help="folder for one checkpoint per arm and run.json (default: none)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the training step (default: on CUDA only)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on CUDA only)")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .lab import LabSpec, train

    if args.eval_every > args.steps:
        raise ValueError(f"--eval-every {args.eval_every} is more than --steps {args.steps}")
    spec = LabSpec(d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads, n_ctx=args.n_ctx,
                   batch_size=args.batch_size, steps=args.steps, eval_every=args.eval_every, warmup=args.warmup,
                   lr=args.lr, seed=args.seed, data=args.data)
    spec.validate()
    run = train(tuple(args.arms), spec, out_dir=args.out, device=args.device, compile=args.compile, amp=args.amp)
    print(run)
    cols = ["arm", "step", "val_loss", "max_ratio_pos0", "max_ratio_other", "n_hits", "fixed_pos_layers",
            "fixed_pos", "first_token_mass", "bias_mass", "tokens_per_s", "mfu"]
    print(run.final()[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        run.to_json(Path(args.out) / f"run_{'_'.join(args.arms)}.json")
    return 0
