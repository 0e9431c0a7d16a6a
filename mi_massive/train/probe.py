"""The lab's instrument: one arm scanned with the package's own analyses on held-out windows.

`scan` (find_massive_activations and layer_profile in one pass, the paper's rule), `attention_sinks` with the sink at
position 0, and one hooked pass for what they do not split: the top-1 |x| / median per layer at position 0 and at
the other positions, and the attention the bias position (k', or softmax1's extra 1) receives.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..arch import hook


def probe(bridge: Any, tokens: Tensor, *, threshold: float = 100.0, ratio: float = 1000.0,
          batch_size: int = 8) -> list[dict]:
    """One row per layer: ratios at position 0 / elsewhere, rule hits, first-token and bias attention mass."""
    from .._hooks import run_with_hooks
    from ..attention import attention_sinks
    from ..detect import scan

    n_layers = bridge.cfg.n_layers
    found, _ = scan(bridge, tokens, threshold=threshold, ratio=ratio, k=1, batch_size=batch_size, progress=False)
    sinks = attention_sinks(bridge, tokens, sink_positions=[0], threshold=threshold, ratio=ratio,
                            batch_size=batch_size)
    first_mass = sinks.sink_mass.mean(1)  # (layer,) mean over heads
    top0 = torch.zeros(n_layers, len(tokens))
    top_rest = torch.zeros_like(top0)
    median = torch.zeros_like(top0)
    bias_mass = torch.full((n_layers,), float("nan"))
    variant = getattr(getattr(bridge.blocks[0].attn, "original_component", None), "variant", None)
    has_bias = variant in ("attn_bias", "softmax1")  # hook_bias_weight fires only where k' (or the 1) exists
    bias_sum = torch.zeros(n_layers)

    for start in range(0, len(tokens), batch_size):
        rows = slice(start, start + batch_size)

        def on_resid(x: Tensor, hook: Any, rows: slice = rows) -> None:
            layer = int(hook.name.split(".")[1])
            a = x.detach().float().abs()  # (batch, pos, d_model)
            median[layer, rows] = a.flatten(1).median(dim=1).values.cpu()
            top0[layer, rows] = a[:, 0].amax(-1).cpu()
            top_rest[layer, rows] = a[:, 1:].amax((1, 2)).cpu()

        def on_bias(w: Tensor, hook: Any) -> None:
            bias_sum[int(hook.name.split(".")[1])] += float(w.detach().float().mean((1, 2)).sum())

        hooks = [(hook.resid_post(l), on_resid) for l in range(n_layers)]
        if has_bias:
            hooks += [(f"blocks.{l}.attn.hook_bias_weight", on_bias) for l in range(n_layers)]
        run_with_hooks(bridge, tokens[rows], hooks, return_type=None)
    if has_bias:
        bias_mass = bias_sum / len(tokens)

    hits = found.to_dataframe()
    n = len(tokens)
    rows_out = []
    for layer in range(n_layers):
        h = hits[hits.layer == layer]
        at0 = h[h.pos == 0].prompt.nunique()
        pos_counts = h.groupby("pos").prompt.nunique()
        top_pos = int(pos_counts.idxmax()) if len(pos_counts) else -1
        rows_out.append({
            "layer": layer,
            "ratio_pos0": float((top0[layer] / median[layer]).mean()),
            "ratio_other": float((top_rest[layer] / median[layer]).mean()),
            "top_pos0": float(top0[layer].mean()), "top_other": float(top_rest[layer].mean()),
            "median": float(median[layer].mean()),
            "n_hits": int(len(h)), "hit_prompts_pos0": at0 / n,
            "hit_prompts_other": h[h.pos != 0].prompt.nunique() / n,
            "hit_pos_mode": top_pos, "hit_pos_share": float(pos_counts.max() / n) if len(pos_counts) else 0.0,
            "hit_dims": " ".join(str(d) for d in sorted(set(h.dim.tolist()))[:8]),
            "first_token_mass": float(first_mass[layer]), "bias_mass": float(bias_mass[layer]),
        })
    return rows_out
