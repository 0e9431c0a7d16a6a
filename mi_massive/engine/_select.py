"""Exact per-row lower median and top-k of |x| on CUDA, by radix select in Triton (the scan's statistics).

The scan needs, for every layer and prompt, the median |x| over pos * d_model entries and the k largest
|x| with their indices. A segmented sort does both but moves every entry and its index through several
passes. Here |x| is never even materialised: the bit patterns of |x| (sign bit cleared) are ordered like
the values, NaN largest, as in a sort. Radix select finds, for two ranks at once (the lower median and the
k-th largest), the exact bit pattern at that rank, DIGIT bits per round: each round is one pass that counts
the next digit of the entries whose higher bits match what is known so far, per chunk of a row, added into
the row's histogram by atomics. Triton's histogram costs about entries x bins whatever the mask, so a
chunk holding few matching entries (most chunks after the first two rounds) adds them one atomic each
instead. Between rounds one program per row resolves the digits found so far from the histograms
(`_RESOLVE`); deriving them in every program of the next round instead saves those launches but costs more
device time on a scan's groups of layers. A last pass writes the median and collects the entries above the k-th
largest, and as many entries equal to it as fit; a top-k over those 2k candidates orders them.

fp32 takes 4 rounds (31 bits), bf16 and fp16 take 2 (15 bits). Nothing leaves the device; nothing syncs.
It takes a fraction of the sort's time on a scan's statistics calls (benchmarks/stats_micro.py; figures in
benchmarks/RESULTS.md).
`available()` says whether Triton can run here; `median_topk` is the entry point; tests/test_select.py
checks it against the sort in Triton's interpreter (CPU) and compiled (CUDA).
"""

from __future__ import annotations

import torch
from torch import Tensor

try:  # Triton ships with PyTorch's CUDA builds; without it the scan sorts (_stats.sorted_stats)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

DIGIT = 8  # bits per round: Triton's histogram costs about entries x bins, so few bins and more rounds
_BLOCK = 4096  # entries per program (fp32)
_SPARSE = 256  # a chunk with at most this many entries to count adds them one by one
_WARPS = 8
_RESOLVE = True  # the digits found so far resolved once per row between rounds (a launch of `rows` programs)
# instead of in every program of the next round
_BLOCK_16, _WARPS_16 = 2048, 4  # bf16/fp16: the fastest block measured on a scan's groups (benchmarks/RESULTS.md)


def available() -> bool:
    return triton is not None


def _shifts(width: int) -> list[int]:
    """Each round's shift: the digit of round i is bits [shift_i, shift_{i-1}) of the key (width bits)."""
    out, high = [], width
    while high > 0:
        high = max(high - DIGIT, 0)
        out.append(high)
    return out


if triton is not None:

    @triton.jit
    def _keys(x_ptr, row, n, chunk, BLOCK: tl.constexpr, IS16: tl.constexpr):
        """The bit patterns of |x| (sign cleared) of one chunk of one row, as int32, and their offsets."""
        offs = chunk * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        v = tl.load(x_ptr + row.to(tl.int64) * n + offs, mask=m, other=0.0)
        if IS16:
            key = (v.to(tl.int16, bitcast=True) & 0x7FFF).to(tl.int32)
        else:
            key = v.to(tl.int32, bitcast=True) & 0x7FFFFFFF
        return key, offs, m

    @triton.jit
    def _found(hist_ptr, rows, row, t, rank, ROUNDS: tl.constexpr, DIGIT: tl.constexpr, LAST: tl.constexpr,
               BINS: tl.constexpr):
        """The bits of target t's key found in the first ROUNDS rounds (DIGIT bits each, LAST in the last of
        them), as an integer, and its rank among the entries that share them, from those rounds' histograms
        (hist[round, row, t, bin]; round 0's is shared)."""
        bins = tl.arange(0, BINS)
        prefix = rank * 0
        for i in tl.static_range(ROUNDS):
            h = tl.load(hist_ptr + ((i * rows + row) * 2 + (t if i > 0 else 0)) * BINS + bins)
            cum = tl.cumsum(h, 0)
            d = tl.sum((cum <= rank).to(tl.int32), 0)  # the digit holding the rank
            rank = rank - tl.sum(tl.where(bins < d, h, 0), 0)
            if i == ROUNDS - 1:
                prefix = (prefix << LAST) | d
            else:
                prefix = (prefix << DIGIT) | d
        return prefix, rank

    @triton.jit
    def _prefix(hist_ptr, found_ptr, rows, row, t, rank, ROUNDS: tl.constexpr, DIGIT: tl.constexpr,
                LAST: tl.constexpr, BINS: tl.constexpr, RESOLVED: tl.constexpr):
        """The bits of target t's key found in the first ROUNDS rounds: read where `_resolve_kernel` left them,
        or derived here from the histograms."""
        if RESOLVED:
            return tl.load(found_ptr + ((ROUNDS - 1) * rows + row) * 2 + t)
        prefix, _ = _found(hist_ptr, rows, row, t, rank, ROUNDS, DIGIT, LAST, BINS)
        return prefix

    @triton.jit
    def _resolve_kernel(hist_ptr, found_ptr, rows, rank0, rank1, ROUNDS: tl.constexpr, DIGIT: tl.constexpr,
                        LAST: tl.constexpr, BINS: tl.constexpr):
        """found[ROUNDS - 1, row, t]: the bits of each target's key found in the first ROUNDS rounds."""
        row = tl.program_id(0)
        for t in tl.static_range(2):
            prefix, _ = _found(hist_ptr, rows, row, t, rank0 if t == 0 else rank1, ROUNDS, DIGIT, LAST, BINS)
            tl.store(found_ptr + ((ROUNDS - 1) * rows + row) * 2 + t, prefix)

    @triton.jit
    def _hist_kernel(x_ptr, hist_ptr, found_ptr, n, rows, rank0, rank1, ROUND: tl.constexpr, HIGH: tl.constexpr,
                     SHIFT: tl.constexpr, DIGIT: tl.constexpr, BINS: tl.constexpr, SPARSE: tl.constexpr,
                     BLOCK: tl.constexpr, IS16: tl.constexpr, RESOLVED: tl.constexpr):
        """Round ROUND: histogram of bits [SHIFT, HIGH) of the entries whose higher bits match each target's.
        A chunk holding at most SPARSE such entries adds them one by one (an atomic each) instead of building
        a histogram, which costs about BLOCK x BINS whatever the mask: after the first rounds most chunks
        hold few or none."""
        row, chunk = tl.program_id(0), tl.program_id(1)
        key, offs, m = _keys(x_ptr, row, n, chunk, BLOCK, IS16)
        digit = (key >> SHIFT) & ((1 << (HIGH - SHIFT)) - 1)
        bins = tl.arange(0, BINS)
        out = hist_ptr + (ROUND * rows + row) * 2 * BINS
        if ROUND == 0:  # nothing known yet: one histogram serves both targets
            h = tl.histogram(digit, BINS, mask=m)
            tl.atomic_add(out + bins, h, mask=h > 0, sem="relaxed")
        else:
            for t in tl.static_range(2):
                prefix = _prefix(hist_ptr, found_ptr, rows, row, t, rank0 if t == 0 else rank1, ROUND, DIGIT, DIGIT,
                                 BINS, RESOLVED)
                ok = m & ((key >> HIGH) == prefix)  # the bits above HIGH, as found
                count = tl.sum(ok.to(tl.int32), 0)
                if count > SPARSE:
                    h = tl.histogram(digit, BINS, mask=ok)
                    tl.atomic_add(out + t * BINS + bins, h, mask=h > 0, sem="relaxed")
                elif count > 0:
                    tl.atomic_add(out + t * BINS + digit, 1, mask=ok, sem="relaxed")

    @triton.jit
    def _collect_kernel(x_ptr, hist_ptr, found_ptr, med_ptr, cand_key_ptr, cand_idx_ptr, count_ptr, n, rows, rank0,
                        rank1, kk, ROUNDS: tl.constexpr, DIGIT: tl.constexpr, LAST: tl.constexpr, BINS: tl.constexpr,
                        BLOCK: tl.constexpr, IS16: tl.constexpr, RESOLVED: tl.constexpr):
        """The median's value, and the candidates of the top kk: every entry above the kk-th largest key, and
        up to kk entries equal to it (slots taken by atomic counters; candidate keys start at -1)."""
        row, chunk = tl.program_id(0), tl.program_id(1)
        med = _prefix(hist_ptr, found_ptr, rows, row, 0, rank0, ROUNDS, DIGIT, LAST, BINS, RESOLVED)
        kth = _prefix(hist_ptr, found_ptr, rows, row, 1, rank1, ROUNDS, DIGIT, LAST, BINS, RESOLVED)
        if chunk == 0:
            if IS16:
                tl.store(med_ptr + row, med.to(tl.int16).to(med_ptr.dtype.element_ty, bitcast=True))
            else:
                tl.store(med_ptr + row, med.to(med_ptr.dtype.element_ty, bitcast=True))
        key, offs, m = _keys(x_ptr, row, n, chunk, BLOCK, IS16)
        base = row.to(tl.int64) * 2 * kk
        same = tl.zeros([BLOCK], dtype=tl.int32)
        above = m & (key > kth)  # fewer than kk in all: no slot overflows
        slot = tl.atomic_add(count_ptr + row * 2 + same, 1, mask=above, sem="relaxed")
        tl.store(cand_key_ptr + base + slot, key, mask=above)
        tl.store(cand_idx_ptr + base + slot, offs.to(tl.int64), mask=above)
        equal = m & (key == kth)
        slot = tl.atomic_add(count_ptr + row * 2 + 1 + same, 1, mask=equal, sem="relaxed")
        fits = equal & (slot < kk)
        tl.store(cand_key_ptr + base + kk + slot, key, mask=fits)
        tl.store(cand_idx_ptr + base + kk + slot, offs.to(tl.int64), mask=fits)


def median_topk(flat: Tensor, kk: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Lower median |x| (as torch.median), the kk largest |x| (descending), their flat indices and signed values,
    per row of `flat` (rows, n) on CUDA, fp32/bf16/fp16. Exact; ties at the kk-th value are broken arbitrarily."""
    rows, n = flat.shape
    if flat.dtype not in (torch.float32, torch.bfloat16, torch.float16) or not 0 < kk <= n:
        raise ValueError(f"median_topk: float32/bfloat16/float16 rows and 0 < kk <= n; got {flat.dtype}, kk={kk}")
    flat = flat.contiguous()
    is16 = flat.element_size() == 2
    width = 15 if is16 else 31  # key bits: |x| has no sign bit
    shifts = _shifts(width)
    rank0, rank1 = (n - 1) // 2, n - kk  # ascending ranks: lower median, kk-th largest
    block, warps = (_BLOCK_16, _WARPS_16) if is16 else (_BLOCK, _WARPS)
    chunks, bins = triton.cdiv(n, block), 1 << DIGIT
    common = dict(DIGIT=DIGIT, BINS=bins, BLOCK=block, IS16=is16, num_warps=warps)
    rounds, resolved = len(shifts), _RESOLVE
    work = torch.zeros(rounds * rows * 2 * (bins + 1) + rows * 2, dtype=torch.int32, device=flat.device)
    hist, found, count = work.split([rounds * rows * 2 * bins, rounds * rows * 2, rows * 2])
    for r, (high, shift) in enumerate(zip([width, *shifts], shifts)):
        _hist_kernel[(rows, chunks)](flat, hist, found, n, rows, rank0, rank1, ROUND=r, HIGH=high, SHIFT=shift,
                                     SPARSE=_SPARSE, RESOLVED=resolved, **common)
        if resolved:
            _resolve_kernel[(rows,)](hist, found, rows, rank0, rank1, ROUNDS=r + 1, DIGIT=DIGIT, LAST=high - shift,
                                     BINS=bins, num_warps=1)
    med = torch.empty(rows, dtype=flat.dtype, device=flat.device)
    cand_key = torch.full((rows, 2 * kk), -1, dtype=torch.int32, device=flat.device)
    cand_idx = torch.empty((rows, 2 * kk), dtype=torch.int64, device=flat.device)
    _collect_kernel[(rows, chunks)](flat, hist, found, med, cand_key, cand_idx, count, n, rows, rank0, rank1, kk,
                                    ROUNDS=rounds, LAST=[width, *shifts][-2] - shifts[-1], RESOLVED=resolved, **common)
    _, j = cand_key.topk(kk, dim=1)  # (rows, kk), descending; empty slots (-1) come last
    topi = cand_idx.gather(1, j)
    signed = flat.gather(1, topi)
    return med, signed.abs(), topi, signed
