"""CUDA graphs of a scan's passes, where they pay.

A small model's scan on a GPU is bound by the host: each batch costs Python and a thousand kernel launches,
while the GPU works for a fraction of that time (benchmarks/RESULTS.md). Every batch of a chunked corpus has the same shape, so one capture of a batch's whole pass (the trunk's
forward, the hooks' copies, the statistics) can be replayed for each later batch of that shape. A replay costs
the GPU's time alone and runs the kernels the eager pass launches, on the same inputs.

A capture costs about one eager batch of host time, so `Passes` captures a shape only where that pays. It
keeps timings by shape with the model's trunk (`Timing`): the host time of an eager batch, the GPU time of a
replay, the host time of a capture. A shape is captured once (eager - replay) x batches left exceeds the
capture's cost. A shape not yet timed runs `EAGER_FIRST` eager batches, then is captured once to learn the
replay's time, if `MIN_LEFT` or more of its batches are left. Graphs live for one scan: they hold device
addresses of the weights, which may be replaced between scans. The timings live with the trunk.

A capture must not copy from the host: transformers builds attention masks that way. So the first eager
pass of each shape in a scan records the mask each decoder layer is given, and the capture hands those to the
layers instead (`_bare.trunk_runner`'s `masks`). Later eager passes of that shape are given them too: building
them makes the host wait for the device twice a pass (a host-to-device copy and a check for packed
sequences), which stalls the queue between batches. So a shape is captured only after one eager batch of it in the
same scan, unless an earlier scan captured it and its masks were kept (KEEP_BYTES in all).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
from torch import Tensor

KEEP_BYTES = 32 << 20  # recorded inputs (masks) of captured shapes kept between scans, up to this many in all
EAGER_FIRST = 2  # eager batches of a shape timed before its first capture (the first one compiles kernels)
MIN_LEFT = 2  # batches of an untimed shape left (this one included) for a capture that learns the replay's time


@dataclass
class Timing:
    """What the passes of one batch shape cost on this model, in seconds (None: not measured yet)."""

    eager: float | None = None  # host time of an eager batch (the least seen)
    eager_runs: int = 0
    replay: float | None = None  # GPU time of a replay (the least seen)
    capture: float | None = None  # host time of a capture (the least seen: one that compiled a kernel is no guide)
    failed: str | None = None  # why a capture failed here (an op it cannot hold): eager for good

    def capture_pays(self, left: int) -> bool:
        """Whether capturing now, with `left` batches of this shape to run (this one included), beats running
        them eagerly."""
        if self.failed is not None or self.eager is None or self.eager_runs < EAGER_FIRST:
            return False
        if self.replay is None:  # learn it
            return left >= MIN_LEFT
        cost = self.capture if self.capture is not None else self.eager
        return (self.eager - self.replay) * left > cost


class Graph:
    """fn(x) captured once, on the current stream (not the default one: capture needs a side stream);
    `graph(x)` copies x into the captured input and replays, returning the captured outputs, which the next
    replay overwrites. `times()` gives the GPU time of each replay so far (once they have run)."""

    def __init__(self, fn: Callable[[Tensor], list[Tensor]], x: Tensor, device: torch.device) -> None:
        self.input = torch.empty(x.shape, dtype=x.dtype, device=device)  # outside the graph's memory pool
        self.input.copy_(x)
        torch.cuda.current_stream().synchronize()  # nothing of an earlier pass runs beside the capture
        self.graph = torch.cuda.CUDAGraph()
        self.graph.capture_begin(capture_error_mode="thread_local")
        try:
            self.outputs = fn(self.input)
        except BaseException:
            try:
                self.graph.capture_end()
            except Exception:  # the capture was invalidated by what raised: that error is the one to see
                pass
            raise
        self.graph.capture_end()
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def __call__(self, x: Tensor) -> list[Tensor]:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.input.copy_(x.pin_memory() if x.device.type == "cpu" else x, non_blocking=True)  # (from pageable
        # memory the copy would wait for the stream)
        start.record()
        self.graph.replay()
        end.record()
        self.events.append((start, end))
        return self.outputs

    def times(self) -> list[float]:
        out = []
        for start, end in self.events:
            end.synchronize()
            out.append(start.elapsed_time(end) / 1000)
        return out


class Passes:
    """A scan's passes on CUDA. `run(key, tokens, fn)` gives fn's device outputs for one batch, from an eager
    call or from a replay of that key's capture, whichever `Timing` says is faster. fn(tokens, inputs) must
    depend on nothing else that changes between batches. `inputs` is a dict: the first eager call of a key
    fills it with what a capture cannot compute itself (the attention masks, `_bare.trunk_runner`), where
    MIN_LEFT or more batches of it are left; the capture and later eager calls read it (so transformers does not
    build the masks again, which makes the host wait for the device twice a pass); eager calls of a key with
    nothing recorded get None. `left` counts the
    batches of each key the scan will run. `timings` (key -> Timing) and `kept` (key -> recorded inputs of
    captured keys, KEEP_BYTES in all) outlive the scan: a key with kept inputs can be captured at its first
    batch. `close()` once every output has been read: it keeps the replays' times and the recorded inputs, and
    drops the graphs."""

    graph_class = Graph  # (tests replace it: no CUDA there)

    def __init__(self, device: torch.device, left: dict[Hashable, int], timings: dict[Hashable, Timing],
                 kept: dict[Hashable, dict]) -> None:
        self.device, self.left, self.timings, self.kept = device, dict(left), timings, kept
        self.graphs: dict[Hashable, Graph] = {}
        self.inputs: dict[Hashable, dict] = dict(kept)  # what the first eager pass of each key recorded

    def run(self, key: Hashable, tokens: Tensor, fn: Callable[[Tensor, dict | None], list[Tensor]]) -> list[Tensor]:
        left = self.left.get(key, 0)
        self.left[key] = max(left - 1, 0)
        timing = self.timings.setdefault(key, Timing())
        graph, inputs = self.graphs.get(key), self.inputs.get(key)
        if graph is None and inputs is not None and timing.capture_pays(left):
            t = time.perf_counter()
            try:
                graph = self.graphs[key] = self.graph_class(lambda x: fn(x, inputs), tokens, self.device)
            except torch.OutOfMemoryError:
                raise
            except RuntimeError as err:  # an op the capture cannot hold (a sync on the host, say)
                timing.failed = f"{type(err).__name__}: {err}"
            timing.capture = _least(timing.capture, time.perf_counter() - t)
        if graph is None:  # the first eager call records the inputs; later ones are given them
            given = self.inputs.setdefault(key, {}) if inputs is None and left >= MIN_LEFT else inputs
            t = time.perf_counter()
            out = fn(tokens, given)
            timing.eager = _least(timing.eager, time.perf_counter() - t)
            timing.eager_runs += 1
            return out
        return graph(tokens)

    def close(self) -> None:
        for key, graph in self.graphs.items():
            times = graph.times()
            if times:
                self.timings[key].replay = _least(self.timings[key].replay, min(times))
        captured, self.graphs = list(self.graphs), {}
        total = sum(_nbytes(inputs) for inputs in self.kept.values())
        for key in captured:
            size = _nbytes(self.inputs[key])
            if key not in self.kept and total + size <= KEEP_BYTES:
                self.kept[key], total = self.inputs[key], total + size


def _least(seen: float | None, new: float) -> float:
    return new if seen is None else min(seen, new)


def _nbytes(inputs: dict) -> int:
    """Device bytes of the tensors in `inputs` (each storage once: layers share masks)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in inputs.values() if isinstance(t, Tensor)}
    return sum(storages.values())
