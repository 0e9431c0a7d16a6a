"""The next-token loss, computed one way wherever an analysis reports one (path patching's metric, the causal
check of `trace_origin`, perplexity)."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor


def next_token_nll(logits: Float[Tensor, "batch n vocab"], targets: Tensor) -> Float[Tensor, "batch n"]:
    """-log softmax(logits)[target] at each position (float32); `targets` is (batch, n), or (n,) for every row.

    As logsumexp minus the target's logit, which skips writing out the log-probabilities (faster than log_softmax
    on path patching's rows; benchmarks/RESULTS.md)."""
    logits = logits.float()
    index = targets.to(logits.device).expand(logits.shape[:2])[..., None]
    return logits.logsumexp(-1) - logits.gather(-1, index)[..., 0]
