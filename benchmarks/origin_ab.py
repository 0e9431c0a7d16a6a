"""trace_origin's cost in forward-equivalents on real smollm2-135m, for an A/B of two versions of the package.

    PYTHONPATH=/path/to/old/checkout python benchmarks/origin_ab.py old --device cuda
    python benchmarks/origin_ab.py new --device cuda --profile tottime

Times (median of 5 after a warm-up, synchronised) one bare forward of the prompt and trace_origin with its
defaults, with BOS, without the causal checks, and with the shortest search; `--profile` adds a cProfile of one
default call. Session 8 found trace_origin at 4.6-5.1 forward-equivalents on the H200 against 2.8 in session 6,
while the old and new code take the same time on the CPU (RESULTS.md): this is the run that says where.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import _sync, timeit  # noqa: E402

PROMPT = "Summer is warm. Winter is cold. The quick brown fox jumps over the lazy dog."


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("label")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--profile", default=None, help="cProfile sort key (tottime, cumulative)")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    import mi_massive
    from mi_massive import load_model, trace_origin

    model = load_model(args.model, device=args.device)
    toks = model.to_tokens(PROMPT)

    def timed(fn) -> float:
        return timeit(fn, args.device, repeat=5)

    fwd = timed(lambda: model(toks, return_type="loss"))
    rec: dict = {"label": args.label, "package": mi_massive.__file__, "device": args.device, "forward_s": fwd}
    for name, kw in (("default", {}), ("bos", {"prepend_bos": True}), ("no_ablate", {"ablate": False}),
                     ("short_search", {"search_steps": 1, "n_random": 0})):
        try:
            rec[name] = timed(lambda: trace_origin(model, PROMPT, **kw)) / fwd
        except TypeError as exc:  # an old version without the argument
            rec[name] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(rec), flush=True)
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        trace_origin(model, PROMPT)
        _sync(args.device)
        prof.disable()
        pstats.Stats(prof).sort_stats(args.profile).print_stats(40)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
