"""The fast paths, behind one wall: bare HF passes, CUDA graphs, Triton statistics, resumed passes.

Analysis modules use only the names below; they take tensors and hook names and return tensors, and never say
which path ran. Nothing here imports an analysis module or builds a result. Knobs are one `settings` object,
changed inside `with configure(...)`; per-model state lives in weak mappings beside the model, never on it.

    >>> from mi_massive import engine
    >>> from mi_massive.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> names = [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    >>> med, top, index, signed = next(engine.block_stats(model, [model.to_tokens("hi")], hook_names=names, k=1,
    ...                                                   more=lambda stats: False))
    >>> top.shape   # (layer, batch, candidates): the 64 largest |x| of each block output
    torch.Size([4, 1, 64])
"""

from ._bare import Unsupported, unwired
from ._resume import resumed
from ._settings import Settings, configure, settings
from ._stream import Stats, block_stats

__all__ = ["Settings", "Stats", "Unsupported", "block_stats", "configure", "resumed", "settings", "unwired"]
