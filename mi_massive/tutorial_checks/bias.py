"""Checks for tutorial 2, massive activations are bias terms: set one entry, perplexity under hooks, the mean."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from ..constancy import massive_stats
from ..interventions import build_intervention, intervene
from ..perplexity import _chunks, perplexity
from ._common import PROMPTS, assert_close, passed

TEXT = " ".join(PROMPTS) * 8  # enough tokens for a few chunks


def check_loss_with_entry_set(fn: Callable, model: Any) -> None:
    """fn(model, prompt, layer=, pos=, dim=, value=) -> mean next-token loss with that block-output entry set."""
    cases = ((11, 0, 507, 0.0), (15, 0, 507, 2.0e4), (5, 3, 100, 50.0))
    for layer, pos, dim, value in cases:
        prompt = PROMPTS[1]
        iv = build_intervention(model, prompt, mode="value", value=value, dims=[dim], layers=[layer], positions=[pos],
                                check_rebuild=False)
        with torch.inference_mode(), intervene(model, iv):
            want = model(prompt, return_type="loss")
        got = fn(model, prompt, layer=layer, pos=pos, dim=dim, value=value)
        assert_close(torch.as_tensor(got), want, f"loss_with_entry_set(layer={layer}, pos={pos}, dim={dim}, "
                     f"value={value:g})", rtol=1e-4)
    passed(fn, f"on {len(cases)} (layer, pos, dim, value) settings")


def check_chunk_perplexity(fn: Callable, model: Any) -> None:
    """fn(model, chunks) -> exp(mean next-token loss) over (chunk, pos) tokens, also inside `intervene`."""
    chunks = _chunks(model, TEXT, 24, 3, True)  # (chunk, 1 + seq_len): BOS, then text
    zero = build_intervention(model, list(PROMPTS), mode="zero", layers=[11], check_rebuild=False)
    for iv in (None, zero):
        want = perplexity(model, TEXT, seq_len=24, max_chunks=3, prepend_bos=True, intervention=iv).perplexity
        with nullcontext() if iv is None else intervene(model, iv):
            got = fn(model, chunks)
        assert_close(torch.as_tensor(float(got)), torch.tensor(want), "chunk_perplexity "
                     + ("of the clean model" if iv is None else "with the massive activations zeroed"), rtol=1e-3)
    passed(fn, "on the clean model and with the massive activations zeroed")


def check_mean_first_value(fn: Callable, model: Any) -> None:
    """fn(model, texts, layer=, dim=) -> mean over texts of block `layer`'s output at (pos 0, dim), no BOS."""
    stats = massive_stats(model, list(PROMPTS), prepend_bos=(False,))
    cases = ((11, stats.dims[0]), (20, stats.dims[0]), (20, stats.dims[-1]))
    for layer, dim in cases:
        want = stats.mean[0, 0, layer, stats.dims.index(dim)]
        assert_close(torch.as_tensor(fn(model, list(PROMPTS), layer=layer, dim=dim)), want,
                     f"mean_first_value(layer={layer}, dim={dim})", rtol=1e-4)
    passed(fn, f"on {len(cases)} (layer, dim) entries")
