"""Resume a forward pass at block `start` from a residual stream already computed: the blocks before it are skipped.

Batched causal runs (trace_origin's ablations, path patching's receivers) differ from the clean run only from
some block on, and every block before it computes what the clean run computed. `resumed(model, start, resid)`
makes blocks 0..start-1 compute nothing, block start-1 returning `resid` (the clean
`blocks.{start}.hook_resid_pre`, repeated to the batch), so a pass costs only the blocks from `start` on, the
final norm and the unembedding.
The model's own forward still runs end to end (embedding, masks, rotary tables, final norm, lm_head,
soft-capping), so whatever a family does outside its blocks stays exact.

No hook of a skipped block fires (not even its hook_resid_pre / hook_resid_post): whatever hooks were
attached when `resid` was captured are already in it, so an active intervention stays exact. Hooks from
block `start` on fire as usual. The blocks' own forwards are put back in `finally`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor

from .._types import HookedModel


@contextmanager
def resumed(model: HookedModel, start: int, resid: Tensor | None) -> Iterator[None]:
    """Skip blocks 0..start-1: block start-1 returns `resid` (batch or 1, pos, d_model), expanded to the run's
    batch; the ones before it pass their input on untouched.

    `start=0` or `resid=None` runs the model unchanged; `start=n_layers` runs only what follows the blocks.
    """
    if start <= 0 or resid is None:
        yield
        return
    if not 0 < start <= model.cfg.n_layers:
        raise ValueError(f"start must be in 1..{model.cfg.n_layers}, got {start}")
    blocks = [model.blocks[l] for l in range(start)]  # the bridge's blocks: their own hook points are skipped too

    def pass_through(hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return hidden_states  # what it returns is never read: the last skipped block replaces it

    def last(hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        r = resid.to(hidden_states.device, hidden_states.dtype)
        if r.shape[1:] != hidden_states.shape[1:] or r.shape[0] not in (1, hidden_states.shape[0]):
            raise ValueError(f"resumed residual has shape {tuple(r.shape)}, the run {tuple(hidden_states.shape)}")
        return r.expand(hidden_states.shape[0], -1, -1).clone()  # hooks downstream may write into it

    saved = [b.__dict__.get("forward") for b in blocks]  # an instance forward set by someone else comes back
    try:
        for l, b in enumerate(blocks):  # an instance attribute shadows the class's forward; object.__setattr__
            # because the bridge's own __setattr__ passes it on to the HF layer
            object.__setattr__(b, "forward", last if l == start - 1 else pass_through)
        yield
    finally:
        for b, old in zip(blocks, saved):
            if old is None:
                b.__dict__.pop("forward", None)
            else:
                object.__setattr__(b, "forward", old)
