"""The scan's statistics of each block output: the median |x| and the top |x| per prompt.

On the CPU they are taken at once, layer by layer (quickselect). On CUDA the outputs of consecutive layers
are gathered into one buffer (`Stash`) and their statistics taken together, by Triton's radix select
(`_select`) where Triton runs, else by sorting chunks of rows. Both are exact, and nothing syncs: `to_host`
brings a pass's results back asynchronously. `_stream.block_stats` drives them; `settings` picks the path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from . import _select
from ._settings import report_once, settings

# (Statistics on a second stream, beside the next layers, measured slower than grouped statistics on the pass's
# stream: benchmarks/RESULTS.md.)


class Choice:
    """The statistics path of one engine call: `settings.cuda_stats` when the call starts; a Triton failure turns
    it to the sort for the rest of that call only (the setting itself never changes)."""

    def __init__(self) -> None:
        self.path = settings.cuda_stats


def sorted_stats(a: Tensor, kk: int) -> tuple[Tensor, Tensor, Tensor]:
    """Lower median (as torch's), top kk and their indices per row, by sorting chunks of rows (the chunks bound
    the sort's scratch memory)."""
    rows = max(1, settings.sort_chunk // a.shape[1])
    parts = []
    for i in range(0, len(a), rows):
        srt, idx = a[i : i + rows].sort(dim=1)  # ascending; NaN sorts last, like topk's
        parts.append((srt[:, (a.shape[1] - 1) // 2].clone(), srt[:, -kk:].flip(1), idx[:, -kk:].flip(1)))  # copies:
        # a view would keep the whole sorted chunk alive until the batch ends
    if len(parts) == 1:  # no copies: every kernel launch counts on small models
        return parts[0]
    return tuple(torch.cat(t) for t in zip(*parts))  # type: ignore[return-value]


def layer_stats(flat: Tensor, kk: int, choice: Choice | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Median |x|, top-kk |x|, their flat indices and signed values per row of `flat` (rows, n), in its dtype;
    stays on the device (no sync; the caller converts on the host)."""
    choice = choice or Choice()
    if flat.is_cuda and choice.path == "triton" and _select.available():
        stats = triton_stats(flat, kk, choice)
        if stats is not None:
            return stats
    a = flat.abs()
    if a.is_cuda:  # sorting in chunks of rows beats CUDA's one-block-per-row median and top-k on long rows
        med, topv, topi = sorted_stats(a, kk)
    else:  # on the CPU, quickselect median and top-k are linear
        med = a.median(dim=1).values
        topv, topi = a.topk(kk, dim=1)  # (batch, kk), sorted
    return med, topv, topi, flat.gather(1, topi)


def triton_stats(flat: Tensor, kk: int, choice: Choice | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """`_select.median_topk`, or None where Triton fails here (and the sort for the rest of this call, `choice`;
    said once per process); running out of memory is raised, since the sort would need more."""
    try:
        return _select.median_topk(flat, kk)
    except torch.OutOfMemoryError:
        raise
    except Exception as err:  # a Triton that cannot compile here
        if choice is not None:
            choice.path = "sort"
        report_once("the scan's Triton statistics", err)
        return None


class Stash:
    """Where a scan's hooks leave each block output: on the CPU its statistics are taken at once; on CUDA the
    outputs of consecutive layers are copied into one buffer (at most `settings.group_bytes`) and their statistics
    taken together: a handful of kernel launches per group of layers instead of per layer, which is what a
    small model's scan is bound by (Python and launches). The buffer is the scan's (`buffers`, by shape and
    dtype) and serves every group and batch: all work is on one stream, so a group's copies are queued after
    the statistics that read the previous group."""

    def __init__(self, device: torch.device, kk: int, buffers: dict, choice: Choice | None = None) -> None:
        self.cuda, self.kk, self.buffers, self.choice = device.type == "cuda", kk, buffers, choice or Choice()
        self.kept: list = []  # per group of layers: (median, top |x|, flat index, signed), (layers, batch[, kk])
        self.buf: Tensor | None = None  # (group, batch, pos, d_model)
        self.slots: tuple[Tensor, ...] = ()  # its layer slots
        self.used = 0

    def keep(self, layer: int, x: Tensor) -> None:
        if not self.cuda:
            self.kept.append(tuple(t[None] for t in layer_stats(x.flatten(1), self.kk, self.choice)))
            return
        if not self.slots:
            key = (tuple(x.shape), x.dtype, x.device)
            if key not in self.buffers:
                group = max(1, settings.group_bytes // (x.numel() * x.element_size()))
                buf = torch.empty((group, *x.shape), dtype=x.dtype, device=x.device)
                self.buffers[key] = buf, buf.unbind(0)
            self.buf, self.slots = self.buffers[key]
        self.slots[self.used].copy_(x)
        self.used += 1
        if self.used == len(self.slots):
            self.flush()

    def flush(self) -> None:
        """Statistics of the layers copied so far, as one (layers * batch) set of rows."""
        if not self.used:
            return
        used, self.used = self.used, 0
        rows = self.buf[:used].view(used * self.buf.shape[1], -1)  # (layers * batch, pos * d_model)
        self.kept.append(tuple(t.unflatten(0, (used, -1)) for t in layer_stats(rows, self.kk, self.choice)))

    def results(self, n_layers: int) -> list[Tensor]:
        """Once the pass is launched: the statistics of every layer, (median, top |x|, flat index, signed) as
        (layer, batch[, kk]) tensors on the pass's device."""
        self.flush()
        out = [torch.cat(t) if len(t) > 1 else t[0] for t in zip(*self.kept)]
        if len(out[0]) != n_layers:
            raise RuntimeError(f"the scan saw {len(out[0])} block outputs of {n_layers}")
        return out


def to_host(out: list[Tensor]) -> Callable[[], list[Tensor]]:
    """A function returning the tensors `out` on the host. From CUDA they travel asynchronously and the function
    waits for them alone (an event), not for what was launched since: the next batch's pass is already queued
    while this one's results are read."""
    if not out[0].is_cuda:
        return lambda: out
    host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True) for t in out]
    done = torch.cuda.Event()
    done.record()

    def collect() -> list[Tensor]:
        done.synchronize()
        return host

    return collect
