"""Exact per-row median |x| and top-kk |x| (values and flat indices): implementations timed against each other.

The scan keeps, for every layer and prompt, the median |x| over (pos * d_model) entries and the kk largest
|x| with their indices (`detect._layer_stats`). On CUDA that is a segmented sort today; this times exact
alternatives on the shapes of a scan batch and checks each against the sort before timing it.

    python benchmarks/stats_micro.py --device cuda                # one JSON line per (shape, dtype, variant)
    python benchmarks/stats_micro.py --device cpu --shapes 16x147456 --repeat 5

Variants (all exact; `a` is |x| as a (rows, n) tensor in the input dtype), each checked against "sort":
  sort          detect._sorted_stats, the CUDA path today: sort chunks of rows, read the lower median, top kk
  builtin       torch.median + torch.topk on whole rows (the CPU path)
  seg+median    two-stage top-kk (top kk of each 4096-entry segment, then of the winners) + torch.median
  seg+kthvalue  two-stage top-kk + torch.kthvalue at the lower median's rank
  select        detect._selected_stats (detect._CUDA_STATS = "select"): two-stage top-kk + a radix-select
                median on the bit patterns of |x| (int32, int16 for 16-bit floats), 8-bit digits, per-row
                histograms by scatter_add; fixed shapes, no host sync
                (32 histograms a row, entry j in the (j % 32)-th, so that atomic adds rarely collide)
  select/1hist  the same with one histogram a row (every entry of a row adds into the same 257 bins)
  seg+radix16   the same with 16-bit digits (half the passes over fp32, one over bf16; 65536 bins a row)
  seg+bisect    two-stage top-kk + a median by bisection on the bit patterns: 31 (fp32) or 15 (16-bit)
                per-row counts, reductions only (no atomics, no sort)
  topk+radix    torch.topk on whole rows + the radix-select median
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import peak_memory, timeit  # noqa: E402  (this folder)
from mi_massive.detect import _radix_median, _segmented_topk, _selected_stats, _sorted_stats  # noqa: E402

Stats = tuple[Tensor, Tensor, Tensor]  # median (rows,), top values (rows, kk), their flat indices (rows, kk)


def bisect_median(a: Tensor) -> Tensor:
    """The lower median by bisection on the bit patterns: one count per bit (reductions only, no atomics)."""
    width = a.element_size() * 8
    ints = {16: torch.int16, 32: torch.int32}[width]
    bits = a.contiguous().view(ints).to(torch.int32)  # (rows, n), ordered like the values
    rank = (a.shape[1] - 1) // 2
    lo = torch.zeros(len(a), 1, dtype=torch.int32, device=a.device)  # the answer lies in [lo, hi]
    hi = torch.full_like(lo, (1 << (width - 1)) - 1)
    for _ in range(width - 1):
        mid = lo + (hi - lo) // 2
        left = (bits <= mid).sum(1, keepdim=True) > rank  # (rows, 1)
        hi, lo = torch.where(left, mid, hi), torch.where(left, lo, mid + 1)
    return lo[:, 0].to(ints).view(a.dtype)


def kth_median(a: Tensor) -> Tensor:
    """The lower median by torch.kthvalue (which, unlike torch.median, counts NaN as largest, like sort)."""
    return a.kthvalue((a.shape[1] - 1) // 2 + 1, dim=1).values


VARIANTS: dict[str, Callable[[Tensor, int], Stats]] = {
    "sort": _sorted_stats,
    "builtin": lambda a, kk: (a.median(dim=1).values, *a.topk(kk, dim=1)),
    "seg+median": lambda a, kk: (a.median(dim=1).values, *_segmented_topk(a, kk)),
    "seg+kthvalue": lambda a, kk: (kth_median(a), *_segmented_topk(a, kk)),
    "select": _selected_stats,  # seg + radix median, 8-bit digits: detect's _CUDA_STATS = "select"
    "select/1hist": lambda a, kk: (_radix_median(a, copies=1), *_segmented_topk(a, kk)),
    "seg+radix16": lambda a, kk: (_radix_median(a, 16, copies=1), *_segmented_topk(a, kk)),
    "seg+bisect": lambda a, kk: (bisect_median(a), *_segmented_topk(a, kk)),
    "topk+radix": lambda a, kk: (_radix_median(a), *a.topk(kk, dim=1)),
}
NAN_MEDIAN = ("builtin", "seg+median")  # torch.median returns NaN for a row holding a NaN; sort does not


def residual_like(rows: int, n: int, dtype: torch.dtype, device: str, seed: int = 0) -> Tensor:
    """A (rows, n) flattened residual stream: Gaussian, a few massive entries, exact ties from rounding."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n, generator=g)
    x[:, torch.randint(0, n, (8,), generator=g)] *= 3000.0  # massive values
    x[:, :64] = x[:, 64:128]  # exact ties, also among the top
    return x.to(device=device, dtype=dtype)


def check(name: str, got: Stats, ref: Stats, a: Tensor) -> None:
    med, topv, topi = got
    rmed, rtopv, _ = ref
    assert torch.equal(med, rmed) or torch.allclose(med, rmed, rtol=0, atol=0, equal_nan=True), f"{name}: median"
    assert torch.allclose(topv, rtopv, rtol=0, atol=0, equal_nan=True), f"{name}: top values"
    assert torch.allclose(a.gather(1, topi), topv, rtol=0, atol=0, equal_nan=True), f"{name}: top indices"
    assert all(len(set(r.tolist())) == r.numel() for r in topi.cpu()), f"{name}: repeated index"


def edge_cases(device: str) -> None:
    """inf and NaN (fp16 overflow), all-equal rows, rows shorter than a segment: every variant agrees with sort."""
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = residual_like(4, 10_001, torch.float32, "cpu", seed=1)
        x[0, 5] = float("inf")
        x[1, 7] = float("nan")
        x[1, 9] = float("-inf")
        x[2] = 1.0
        for a in (x.to(device, dtype).abs(), x[:, :100].to(device, dtype).abs()):
            ref = _sorted_stats(a, 64)
            for name, fn in VARIANTS.items():
                if name in NAN_MEDIAN:
                    continue
                check(f"{name} edge {dtype}", fn(a, 64), ref, a)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shapes", nargs="*", default=["16x147456", "16x524288"],
                   help="ROWSxN; default 16 x 256*576 (smollm2) and 16 x 256*2048 (the 1.1B LLaMA)")
    p.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument("--kk", type=int, default=64)
    p.add_argument("--repeat", type=int, default=None, help="timed runs per variant (default 50 on CUDA, 5 on CPU)")
    args = p.parse_args(argv)
    repeat = args.repeat or (50 if args.device.startswith("cuda") else 5)
    torch.set_grad_enabled(False)
    edge_cases(args.device)
    meta = {"device": args.device, "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    for shape in args.shapes:
        rows, n = (int(v) for v in shape.split("x"))
        for dtype_name in args.dtypes:
            x = residual_like(rows, n, getattr(torch, dtype_name), args.device)
            a = x.abs()
            ref = _sorted_stats(a, args.kk)
            base = None
            for name in dict.fromkeys(["sort", *args.variants]):  # sort first: the others are ratios to it
                fn = VARIANTS[name]
                check(name, fn(a, args.kk), ref, a)
                run = lambda: fn(x.abs(), args.kk)  # noqa: E731
                sec = timeit(run, args.device, repeat=repeat)
                peak = peak_memory(run, args.device) if args.device.startswith("cuda") else 0.0
                base = base or sec
                print(json.dumps({**meta, "shape": shape, "dtype": dtype_name, "variant": name, "exact": True,
                                  "ms": round(sec * 1e3, 4), "over_sort": round(sec / base, 3),
                                  "peak_mb": round(peak / 2**20, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
