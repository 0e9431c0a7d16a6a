"""Exact per-row median |x| and top-kk |x| (values and flat indices): implementations timed against each other.

The scan keeps, for every layer and prompt, the median |x| over (pos * d_model) entries and the kk largest
|x| with their indices (`_stats.layer_stats`). On CUDA that is `_select.median_topk` (Triton) where Triton
runs, else a segmented sort; this times exact alternatives on the shapes of a scan's statistics call (on
CUDA the scan takes the block outputs of up to 256 MB of layers at once, so rows = layers x batch) and
checks each against the sort before timing it.

    python benchmarks/stats_micro.py --device cuda                # one JSON line per (shape, dtype, variant)
    python benchmarks/stats_micro.py --device cpu --shapes 16x147456 --repeat 5

Variants (all exact; `a` is |x| as a (rows, n) tensor in the input dtype), each checked against "sort":
  sort          _stats.sorted_stats, the CUDA path without Triton: sort chunks of rows, read the lower
                median and the top kk
  builtin       torch.median + torch.topk on whole rows (the CPU path)
  seg+median    two-stage top-kk (top kk of each 4096-entry segment, then of the winners) + torch.median
  seg+kthvalue  two-stage top-kk + torch.kthvalue at the lower median's rank
  select        two-stage top-kk + a radix-select median in torch ops on the bit patterns of |x| (int32,
                int16 for 16-bit floats), 8-bit digits, per-row histograms by scatter_add; fixed shapes, no
                host sync (32 histograms a row, entry j in the (j % 32)-th, so that atomic adds rarely
                collide). The scan's "select" path in session 2; here only since Triton's is faster
  select/1hist  the same with one histogram a row (every entry of a row adds into the same 257 bins)
  seg+radix16   the same with 16-bit digits (half the passes over fp32, one over bf16; 65536 bins a row)
  seg+bisect    two-stage top-kk + a median by bisection on the bit patterns: 31 (fp32) or 15 (16-bit)
                per-row counts, reductions only (no atomics, no sort)
  topk+radix    torch.topk on whole rows + the radix-select median
  triton        mi_massive.engine._select.median_topk (engine.settings.cuda_stats = "triton", the default where Triton runs):
                radix select in Triton kernels, 8-bit digits, straight from the signed x (no |x| tensor);
                timed on x itself. On the CPU only with TRITON_INTERPRET=1 (for checking, not timing)
  triton/4bit, triton/5bit, triton/6bit, triton/11bit   the same with other digit widths (rounds x bins trade-off)
  triton/dense  the same with a histogram in every chunk (no per-entry atomics for sparse chunks)
  triton/sparse1k   the same with per-entry atomics in chunks of up to 1024 matching entries (256 shipped)
  triton/derive the same with the digits found so far derived in every program from the histograms (no launch
                between rounds) instead of resolved once per row between rounds
  triton/block2k, triton/block8k, triton/block8k/16w, triton/block16k   other entries a program (and warps)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import peak_memory, settings, timeit  # noqa: E402  (this folder)
from mi_massive.engine import _select  # noqa: E402
from mi_massive.engine._stats import sorted_stats  # noqa: E402

Stats = tuple[Tensor, Tensor, Tensor]  # median (rows,), top values (rows, kk), their flat indices (rows, kk)
SEGMENT = 4096  # entries per segment of the two-stage top-k
HIST_COPIES = 32  # histograms per row in the torch radix select (spreads CUDA's atomic adds)


def segmented_topk(a: Tensor, kk: int) -> tuple[Tensor, Tensor]:
    """Top kk per row as the top kk of each segment's top kk: many short selections instead of one long one."""
    n_seg = a.shape[1] // SEGMENT
    if kk > SEGMENT // 4 or n_seg < 2:
        return a.topk(kk, dim=1)
    v, i = a[:, : n_seg * SEGMENT].unflatten(1, (n_seg, SEGMENT)).topk(kk, dim=2)  # (batch, n_seg, kk)
    i = i + torch.arange(0, n_seg * SEGMENT, SEGMENT, device=a.device)[:, None]
    tail = a[:, n_seg * SEGMENT :]  # (batch, < SEGMENT)
    tv, ti = tail.topk(min(kk, tail.shape[1]), dim=1)
    v, i = torch.cat([v.flatten(1), tv], 1), torch.cat([i.flatten(1), ti + n_seg * SEGMENT], 1)
    top, j = v.topk(kk, dim=1)  # (batch, kk), sorted
    return top, i.gather(1, j)


def radix_median(a: Tensor, digit_bits: int = 8, copies: int = HIST_COPIES) -> Tensor:
    """Lower median per row of non-negative floats (NaN counted largest, as by sort), by radix select on their
    bit patterns: one per-row histogram of each `digit_bits`-bit digit, fixed shapes, no host sync. Each row
    fills `copies` histograms (entry j the (j % copies)-th), so that CUDA's atomic adds rarely collide."""
    batch, n = a.shape
    width = a.element_size() * 8
    ints = {16: torch.int16, 32: torch.int32}[width]
    bits = a.contiguous().view(ints).to(torch.int32)  # (batch, n), ordered like the values
    n_bins = 1 << digit_bits
    copy_base = (torch.arange(n, device=a.device) % copies) * (n_bins + 1)  # (n,): each entry's histogram
    rank = torch.full((batch, 1), (n - 1) // 2, dtype=torch.long, device=a.device)  # rank within the prefix
    prefix = torch.zeros(batch, 1, dtype=torch.int32, device=a.device)  # the median's bits found so far
    ones = torch.ones(1, dtype=torch.long, device=a.device).expand(batch, n)
    for shift in range(width - digit_bits, -1, -digit_bits):
        digit = (bits >> shift) & (n_bins - 1)  # (batch, n)
        if shift + digit_bits < width:  # entries off the prefix count in an extra bin
            digit = torch.where((bits >> (shift + digit_bits)) == (prefix >> (shift + digit_bits)), digit, n_bins)
        hist = torch.zeros(batch, copies * (n_bins + 1), dtype=torch.long, device=a.device)
        hist = hist.scatter_add_(1, digit + copy_base, ones).view(batch, copies, n_bins + 1).sum(1)
        cum = hist[:, :n_bins].cumsum(1)  # (batch, n_bins)
        d = (cum <= rank).sum(1, keepdim=True)  # the digit holding the rank
        rank = rank - torch.where(d > 0, cum.gather(1, (d - 1).clamp(min=0)), 0)
        prefix = prefix | (d.to(torch.int32) << shift)
    return prefix[:, 0].to(ints).view(a.dtype)


def selected_stats(a: Tensor, kk: int) -> tuple[Tensor, Tensor, Tensor]:
    """What `sorted_stats` returns, by selection in torch ops instead of a sort."""
    return (radix_median(a), *segmented_topk(a, kk))


def _triton_with(**knobs: int) -> Callable[[Tensor, int], Stats]:
    """_select.median_topk with some of its module settings changed for the call: DIGIT (bits a round: fewer
    rounds and more bins, or the reverse), _SPARSE (-1: a histogram in every chunk, however few it counts),
    _BLOCK (entries a program), _WARPS, _RESOLVE."""
    def run(x: Tensor, kk: int) -> Stats:
        with settings([(_select, k, v) for k, v in knobs.items()]):
            return _select.median_topk(x, kk)[:3]
    return run


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
    "sort": sorted_stats,
    "builtin": lambda a, kk: (a.median(dim=1).values, *a.topk(kk, dim=1)),
    "seg+median": lambda a, kk: (a.median(dim=1).values, *segmented_topk(a, kk)),
    "seg+kthvalue": lambda a, kk: (kth_median(a), *segmented_topk(a, kk)),
    "select": selected_stats,  # seg + radix median, 8-bit digits (detect's "select" path in session 2)
    "select/1hist": lambda a, kk: (radix_median(a, copies=1), *segmented_topk(a, kk)),
    "seg+radix16": lambda a, kk: (radix_median(a, 16, copies=1), *segmented_topk(a, kk)),
    "seg+bisect": lambda a, kk: (bisect_median(a), *segmented_topk(a, kk)),
    "topk+radix": lambda a, kk: (radix_median(a), *a.topk(kk, dim=1)),
    "triton": lambda a, kk: _select.median_topk(a, kk)[:3],
    "triton/4bit": _triton_with(DIGIT=4),
    "triton/5bit": _triton_with(DIGIT=5),
    "triton/6bit": _triton_with(DIGIT=6),
    "triton/11bit": _triton_with(DIGIT=11),
    "triton/dense": _triton_with(_SPARSE=-1),
    "triton/sparse1k": _triton_with(_SPARSE=1024),
    "triton/derive": _triton_with(_RESOLVE=False),
    "triton/block2k": _triton_with(_BLOCK=2048, _WARPS=4),
    "triton/block8k": _triton_with(_BLOCK=8192),
    "triton/block8k/16w": _triton_with(_BLOCK=8192, _WARPS=16),
    "triton/block16k": _triton_with(_BLOCK=16384, _WARPS=16),
}
SIGNED = tuple(k for k in VARIANTS if k.startswith("triton"))  # takes x itself: timed without the abs the others need
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


def edge_cases(device: str, names: list[str]) -> None:
    """inf and NaN (fp16 overflow), all-equal rows, rows shorter than a segment: every variant agrees with sort."""
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = residual_like(4, 10_001, torch.float32, "cpu", seed=1)
        x[0, 5] = float("inf")
        x[1, 7] = float("nan")
        x[1, 9] = float("-inf")
        x[2] = 1.0
        for a in (x.to(device, dtype).abs(), x[:, :100].to(device, dtype).abs()):
            ref = sorted_stats(a, 64)
            for name in names:
                if name not in NAN_MEDIAN:
                    check(f"{name} edge {dtype}", VARIANTS[name](a, 64), ref, a)


def kernel_times(run: Callable[[], object], repeat: int) -> dict[str, float]:
    """Device time per kernel (ms a call, the mean over `repeat` calls), in launch order, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    run()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeat):
            run()
        torch.cuda.synchronize()
    events = sorted((e for e in prof.events() if e.device_type.name == "CUDA"), key=lambda e: e.time_range.start)
    per_call = max(1, len(events) // repeat)  # kernels of one call, in launch order (rounds share a kernel name)
    times: dict[str, float] = {}
    for i, e in enumerate(events):
        key = f"{i % per_call}:{e.name[:50]}"
        times[key] = times.get(key, 0.0) + e.device_time / 1e3 / repeat
    return {k: round(v, 4) for k, v in times.items()}


def _runs_triton() -> bool:
    """Triton's kernels run where CUDA is, or anywhere in its interpreter."""
    return _select.available() and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shapes", nargs="*", default=["16x147456", "16x524288"],
                   help="ROWSxN; default 16 x 256*576 (smollm2) and 16 x 256*2048 (the 1.1B LLaMA)")
    p.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    p.add_argument("--variants", nargs="*", default=[v for v in VARIANTS if v not in SIGNED or _runs_triton()])
    p.add_argument("--kk", type=int, default=64)
    p.add_argument("--repeat", type=int, default=None, help="timed runs per variant (default 50 on CUDA, 5 on CPU)")
    p.add_argument("--kernels", action="store_true", help="also each variant's device time per kernel (torch.profiler)")
    args = p.parse_args(argv)
    repeat = args.repeat or (50 if args.device.startswith("cuda") else 5)
    torch.set_grad_enabled(False)
    edge_cases(args.device, args.variants)
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(["stats_micro.py", *sys.argv[1:]]),
            "device": args.device, "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    for shape in args.shapes:
        rows, n = (int(v) for v in shape.split("x"))
        for dtype_name in args.dtypes:
            x = residual_like(rows, n, getattr(torch, dtype_name), args.device)
            a = x.abs()
            ref = sorted_stats(a, args.kk)
            base = None
            for name in dict.fromkeys(["sort", *args.variants]):  # sort first: the others are ratios to it
                fn = VARIANTS[name]
                check(name, fn(a, args.kk), ref, a)
                run = (lambda: fn(x, args.kk)) if name in SIGNED else (lambda: fn(x.abs(), args.kk))  # noqa: E731
                sec = timeit(run, args.device, repeat=repeat)
                peak = peak_memory(run, args.device) if args.device.startswith("cuda") else 0.0
                base = base or sec
                extra = {"kernels_ms": kernel_times(run, repeat)} if args.kernels else {}
                print(json.dumps({**meta, "shape": shape, "dtype": dtype_name, "variant": name, "exact": True,
                                  "ms": round(sec * 1e3, 4), "over_sort": round(sec / base, 3),
                                  "peak_mb": round(peak / 2**20, 2), **extra}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
