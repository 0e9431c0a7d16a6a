"""The scan's passes: statistics of every block output, batch after batch, on the fastest path that is exact.

One forward pass per batch. Inside the hooks only the median and the top |x| of each layer are kept; the
caller says, from those, whether more candidates are needed (`more`), and the batch is then run again with more,
so what it derives is exact. On CUDA a batch's results are read once the next batch is launched, so that the
device never waits for the host between batches.

The passes run the bare HF trunk (no bridge hook points, no lm_head; `_bare.trunk_runner`) wherever it can stand
in for the bridge, and the bridge's hooks otherwise. On CUDA the trunk's passes run on a side stream kept with
the trunk, and, where the timings kept there say it pays, as replays of one CUDA graph per batch shape (`_graphs`;
the same kernels on the same inputs, so the same results).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from .._hooks import run_with_hooks
from .._types import HookedModel
from . import _bare, _graphs, _stats
from ._settings import settings

Stats = list[Tensor]  # (median (layer, batch), top |x| (layer, batch, kk), flat index, signed value), on the host,
# floats as float32


def _trunk(model: HookedModel) -> Any:
    """The bare HF trunk's runner (`_bare.trunk_runner`), or None where it cannot stand in for the bridge."""
    try:
        return _bare.trunk_runner(model)
    except _bare.Unsupported:
        return None


def block_stats(model: HookedModel, batches: Sequence[Tensor], *, hook_names: Sequence[str], k: int,
                more: Callable[[Stats], bool]) -> Iterator[Stats]:
    """For each (batch, pos) token tensor of `batches`, in order: the median |x| and the top kk |x| (descending),
    their flat indices into (pos, d_model) and their signed values, of every block output, per prompt, as host
    tensors. `hook_names[l]` is block l's output (`blocks.{l}.hook_resid_post`), which the bare trunk's decoder
    layer l returns. kk starts at max(k, settings.candidates) and grows 16x while `more(stats)` says the kept
    candidates may not hold everything the caller needs (kk is at most pos * d_model)."""
    n_layers, d_model = model.cfg.n_layers, model.cfg.d_model
    if len(hook_names) != n_layers:
        raise ValueError(f"{len(hook_names)} hook names for {n_layers} block outputs")
    trunk = _trunk(model) if settings.bare else None
    param = next(model.parameters())
    x_device, dtype = param.device, param.dtype
    attn = getattr(getattr(model, "original_model", None), "config", None)
    attn = getattr(attn, "_attn_implementation", None)  # (the masks a pass records depend on it)
    buffers: dict = {}  # the CUDA statistics' buffers of layer outputs (`_stats.Stash`)
    choice = _stats.Choice()  # the statistics' path for this call

    def stats_pass(tokens: Tensor, kk: int, masks: dict | None = None) -> list[Tensor]:
        """One pass of the bare trunk over a batch; its statistics on the device (`masks`: `_bare.trunk_runner`)."""
        stash = _stats.Stash(x_device, kk, buffers, choice)
        trunk(tokens, stash.keep, masks)
        return stash.results(n_layers)

    def launch(tokens: Tensor, kk: int) -> Callable[[], list[Tensor]]:
        """One pass over a batch, its statistics kept in `kk` candidates per prompt and layer."""
        nonlocal trunk
        if trunk is not None:
            try:
                out = stats_pass(tokens, kk) if passes is None else passes.run(
                    shape_key(tokens, kk), tokens, lambda t, masks: stats_pass(t, kk, masks))
                return _stats.to_host(out)
            except _bare.Unsupported:
                trunk = None  # the bridge for the rest of the call
        stash = _stats.Stash(x_device, kk, buffers, choice)
        run_with_hooks(model, tokens,  # non-finite values are the caller's to report
                       [(name, lambda x, hook, l=l: stash.keep(l, x)) for l, name in enumerate(hook_names)],
                       finite_check=False)
        return _stats.to_host(stash.results(n_layers))

    def collected(tokens: Tensor, kk: int, collect: Callable[[], list[Tensor]]) -> Stats:
        """A batch's statistics; run again with more candidates while `more` asks for them."""
        size = tokens.shape[1] * d_model
        while True:
            out = [t.float() if t.is_floating_point() else t for t in collect()]
            if kk == size or not more(out):
                return out
            kk = min(size, kk * 16)
            collect = launch(tokens, kk)

    def first_kk(tokens: Tensor) -> int:
        return min(tokens.shape[1] * d_model, max(settings.candidates, k))

    def shape_key(tokens: Tensor, kk: int) -> tuple:
        """What a pass's CUDA graph, timings and masks depend on."""
        return tuple(tokens.shape), kk, dtype, x_device, attn

    passes, stream = None, None
    if x_device.type == "cuda" and trunk is not None:
        kept = _bare.kept_trunk(model)
        if x_device not in kept.streams:
            kept.streams[x_device] = torch.cuda.Stream(x_device)  # capture needs a side stream
        stream = kept.streams[x_device]
        stream.wait_stream(torch.cuda.current_stream(x_device))  # (what was queued before: weight edits, say)
    if x_device.type == "cuda":  # pinned, a batch's tokens travel without the host waiting for the device to
        batches = [b.pin_memory() for b in batches]  # finish the last batch
    if stream is not None and settings.cuda_graphs:
        left = collections.Counter(shape_key(b, first_kk(b)) for b in batches)
        passes = _graphs.Passes(x_device, left, kept.timings, kept.masks)
    pending = None  # on CUDA, the last batch launched: its results are read once the next one is launched
    try:
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            for tokens in batches:
                kk = first_kk(tokens)
                if x_device.type != "cuda":  # nothing to overlap on the CPU; results kept through the next
                    yield collected(tokens, kk, launch(tokens, kk))  # forward would fragment its heap (peak RSS:
                    continue  # benchmarks/RESULTS.md)
                collect = launch(tokens, kk)
                if pending is not None:
                    yield collected(*pending)
                pending = (tokens, kk, collect)
            if pending is not None:
                yield collected(*pending)
            if passes is not None:
                passes.close()
    finally:  # the caller's stream waits for the call's work, also after an error
        if stream is not None:
            torch.cuda.current_stream(x_device).wait_stream(stream)
