"""The `mi-massive` command line: one subcommand per analysis.

    mi-massive scan                      # massive activations and layer profile of smollm2-135m
    mi-massive scan gemma3-270m --prompt "Summer is warm."

Each subcommand lives beside its analysis as `add_<name>_command(subparsers)` registered in _COMMANDS.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

DEFAULT_PROMPTS = (
    "Summer is warm. Winter is cold.",
    "The quick brown fox jumps over the lazy dog.",
    "In 1905, Albert Einstein published four papers that changed physics.",
    "Massive activations act as fixed but important bias terms in large language models.",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one clear line, exit 2
        sys.stderr.write(f"mi-massive: error: {message}\n")
        raise SystemExit(2)


def add_model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="smollm2-135m",
                   help="short name (smollm2-135m, gemma3-270m), HF id or local dir (default: smollm2-135m)")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def load_from_args(args: argparse.Namespace):
    import torch

    from .models import load_model

    return load_model(args.model, device=args.device, dtype=getattr(torch, args.dtype))


def prompts_from_args(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if getattr(args, "file", None):
        with open(args.file, encoding="utf-8") as fh:
            prompts += [line.strip() for line in fh if line.strip()]
    return prompts or list(DEFAULT_PROMPTS)


def add_prompt_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", action="append", help="a prompt (repeatable; default: four built-in prompts)")
    p.add_argument("--file", help="a text file, one prompt per line")


def _scan(args: argparse.Namespace) -> int:
    import pandas as pd

    from .detect import scan

    model = load_from_args(args)
    found, profile = scan(model, prompts_from_args(args), threshold=args.threshold, ratio=args.ratio, k=args.k,
                          progress=True if args.progress else None)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(found)
        print(found.summary().to_string(index=False) if len(found) else "(no hits)")
        print()
        print(profile)
        print(profile.to_dataframe().to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def add_scan_command(sub) -> None:
    p = sub.add_parser("scan", help="find massive activations and print the layer profile")
    add_model_argument(p)
    add_prompt_arguments(p)
    p.add_argument("--threshold", type=float, default=100.0, help="|x| must exceed this (default 100)")
    p.add_argument("--ratio", type=float, default=1000.0, help="|x| >= ratio x layer median (default 1000)")
    p.add_argument("-k", type=int, default=3, help="top-k magnitudes in the profile (default 3)")
    p.add_argument("--progress", action="store_true", help="always show a progress bar")
    p.set_defaults(func=_scan)


# name -> "module:function" that adds the subcommand; imported lazily so `--help` stays fast.
_COMMANDS: dict[str, str] = {
    "scan": "mi_massive.cli:add_scan_command",
    "table3": "mi_massive.perplexity:add_table3_command",
    "trace": "mi_massive.origin:add_trace_command",
    "patch": "mi_massive.patching:add_patch_command",
    "report": "mi_massive.report:add_report_command",
    "sinks": "mi_massive.attention:add_sinks_command",
}


def _load(target: str) -> Callable:
    import importlib

    module, _, fn = target.partition(":")
    return getattr(importlib.import_module(module), fn)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mi-massive", description="Find, explain and visualise massive activations.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for target in _COMMANDS.values():
        _load(target)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        sys.stderr.write(f"mi-massive: error: {exc}\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
