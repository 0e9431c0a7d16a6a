"""Checks for tutorial 2, massive activations are bias terms: set one entry, perplexity under hooks, the mean."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from .._types import HookedModel
from ..interventions import build_intervention, intervene
from ..perplexity import _chunks, perplexity
from ._common import PROMPTS, assert_close, passed, reference, student_bos

TEXT = " ".join(PROMPTS) * 8  # enough tokens for a few chunks
SEQ_LEN, N_CHUNKS = 24, 3


def chunk_tokens(model: HookedModel, texts: str | list[str], seq_len: int, n_chunks: int, bos: bool) -> torch.Tensor:
    """(n_chunks, seq_len [+ 1]) token chunks cut as `perplexity` cuts its text (a BOS first if `bos`)."""
    chunks = _chunks(model, [texts] if isinstance(texts, str) else texts, seq_len, n_chunks, bos)
    return chunks if isinstance(chunks, torch.Tensor) else torch.stack(list(chunks))


@reference
def _loss_with_value(model: HookedModel, prompt: str, layer: int, pos: int, dim: int, value: float) -> torch.Tensor:
    iv = build_intervention(model, prompt, mode="value", value=value, dims=[dim], layers=[layer], positions=[pos],
                            check_rebuild=False, prepend_bos=student_bos(model))
    with torch.inference_mode(), intervene(model, iv):
        return model(prompt, return_type="loss")


def check_loss_with_entry_set(fn: Callable, model: HookedModel) -> None:
    """fn(model, prompt, layer=, pos=, dim=, value=) -> mean next-token loss with that block-output entry set."""
    cases = ((11, 0, 507, 0.0), (15, 0, 507, 2.0e4), (5, 3, 100, 50.0))
    prompt = PROMPTS[1]
    got = [fn(model, prompt, layer=layer, pos=pos, dim=dim, value=value) for layer, pos, dim, value in cases]
    for (layer, pos, dim, value), g in zip(cases, got):
        assert_close(torch.as_tensor(g), _loss_with_value(model, prompt, layer, pos, dim, value),
                     f"loss_with_entry_set(layer={layer}, pos={pos}, dim={dim}, value={value:g})", rtol=1e-4)
    passed(fn, f"on {len(cases)} (layer, pos, dim, value) settings")


@reference
def _zero(model: HookedModel) -> Any:
    return build_intervention(model, list(PROMPTS), mode="zero", layers=[11], check_rebuild=False, prepend_bos=True)


@reference
def _perplexity(model: HookedModel, iv: Any) -> float:
    return perplexity(model, TEXT, seq_len=SEQ_LEN, max_chunks=N_CHUNKS, prepend_bos=True, intervention=iv,
                      progress=False).perplexity


def check_chunk_perplexity(fn: Callable, model: HookedModel) -> None:
    """fn(model, chunks) -> exp(mean next-token loss) over (chunk, pos) tokens, also inside `intervene`."""
    chunks = chunk_tokens(model, TEXT, SEQ_LEN, N_CHUNKS, True)  # (chunk, 1 + seq_len): BOS, then text
    clean = fn(model, chunks)
    with intervene(model, _zero(model)):
        zeroed = fn(model, chunks)
    for iv, got in ((None, clean), (_zero(model), zeroed)):
        assert_close(torch.as_tensor(float(got)), torch.tensor(_perplexity(model, iv)), "chunk_perplexity "
                     + ("of the clean model" if iv is None else "with the massive activations zeroed"), rtol=1e-3)
    passed(fn, "on the clean model and with the massive activations zeroed")


def check_mean_first_value(fn: Callable, model: HookedModel) -> None:
    """fn(model, texts, layer=, dim=) -> mean over texts of block `layer`'s output at (pos 0, dim), no BOS."""
    from .finding import _found, _resid

    got = [fn(model, list(PROMPTS), layer=model.cfg.n_layers // 2, dim=0)]  # needs no reference: a stub fails at once
    dims = _found(model, PROMPTS, 100.0, 1000.0, False).dims  # the massive dimensions without BOS
    cases = ((model.cfg.n_layers // 2, 0), (11, dims[0]), (20, dims[-1]))
    got += [fn(model, list(PROMPTS), layer=layer, dim=dim) for layer, dim in cases[1:]]
    for (layer, dim), g in zip(cases, got):
        want = torch.stack([_resid(model, t, layer, False)[0, dim] for t in PROMPTS]).mean()
        assert_close(torch.as_tensor(g), want, f"mean_first_value(layer={layer}, dim={dim})", rtol=1e-4)
    passed(fn, f"on {len(cases)} (layer, dim) entries")
