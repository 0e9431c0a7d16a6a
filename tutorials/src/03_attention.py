# %% [markdown]
# # Tutorial 3: attention sinks and the implicit attention bias
#
# Sun et al. (Sec. 4) connect massive activations to **attention sinks**: after the layer where the massive
# activation appears, most heads put most of their attention on the token that holds it. That token's key
# is unusual (so every query finds it), its value is small, and the value update it contributes is nearly
# the same for every query: an **implicit bias** in the attention output. You will test each of these claims
# on SmolLM2-135M, and find where one of them holds only by construction. Their Eq. 2 splits each head's
# output into the part from the sink tokens `C` and the rest:
#
# $$\text{Attention}(Q, K, V)_q = \sum_{i \in C} p_{qi} v_i + \sum_{i \notin C} p_{qi} v_i$$
#
# Learning objectives:
#
# - read attention patterns, keys and values from hooks (grouped-query attention included);
# - measure the attention on the massive token per layer and head;
# - split a head's output as in Eq. 2 and check that the split is exact;
# - test the bias view causally: swap the sink part for its mean.

# %% [imports]
import torch
from IPython.display import Markdown

from mi_massive import (attention_patterns, attention_sinks, find_massive_activations, implicit_bias, load_model,
                        swap_implicit_bias)
from mi_massive.tutorial_checks import answer
from mi_massive.tutorial_checks import attention as checks

# %%
torch.set_grad_enabled(False)
model = load_model("smollm2-135m")
PROMPTS = [
    "Summer is warm. Winter is cold.",
    "The quick brown fox jumps over the lazy dog.",
    "In 1905, Albert Einstein published four papers that changed physics.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
]
print(find_massive_activations(model, PROMPTS))
cfg = model.cfg
print(f"{cfg.n_heads} query heads share {cfg.n_key_value_heads} key/value heads of size {cfg.d_head}")

# %% [markdown]
# ## 1. Where the attention goes
#
# `blocks.{layer}.attn.hook_pattern` holds the attention probabilities, `(batch, head, query_pos, key_pos)`.
# Look at a layer after the massive activation appears (each query is a row; the massive token is starred):

# %%
attention_patterns(model, PROMPTS[0], 15).show()

# %% [markdown]
# ### Exercise 3.1: attention mass on the first token
#
# For each head of `layer`, return the attention paid to position 0, averaged over the queries at positions
# 1 and later (position 0 can only attend to itself, so it is left out).

# %% [exercise difficulty=1 minutes=10]
def sink_mass(model, prompt: str, *, layer: int) -> torch.Tensor:
    """(n_heads,) mean over queries 1.. of the attention probability on key position 0."""
    # EXERCISE
    # raise NotImplementedError("hook_pattern[0, :, 1:, 0], averaged over queries")
    # SOLUTION
    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = model.run_with_cache(prompt, names_filter=name)
    return cache[name][0, :, 1:, 0].mean(-1)
    # END


# %%
checks.check_sink_mass(sink_mass, model)

# %% [markdown]
# `attention_sinks` measures the same for every layer and head, on the tokens that hold massive activations
# (its `sink_positions`), with the prompts as the model's own tokenizer makes them (no BOS for SmolLM2: the
# sentence says which). `alpha` is the attention-sink score of Gu et al. (2024).

# %%
# Key figure: attention on the massive-activation token per layer and head (sink mass and alpha heatmaps)
sinks = attention_sinks(model, PROMPTS)
print(sinks)
sinks.show()

# %% [markdown]
# ### Question: does the sink come with the massive activation?
#
# The paper's ordering: first the massive activation appears, then attention concentrates on its token. Read
# the heatmap (and `sinks.by_layer()`) below and above the first layer with a massive activation. Does
# attention on that token start there, or before?

# %% [answer]
by_layer = sinks.by_layer()
first = sinks.first_massive_layer
sink_before, sink_after = by_layer[by_layer.layer <= first], by_layer[by_layer.layer > first]
early = sink_before[sink_before.sink_mass >= 0.3]
answer(f"The massive activation first appears in the output of block {first}. After it, queries put "
       f"{sink_after.sink_mass.mean():.0%} of their attention on the sink token (head average, from "
       f"{sink_after.sink_mass.min():.0%} to {sink_after.sink_mass.max():.0%} by layer) and {sink_after.sink_heads.mean():.0%} of "
       f"the heads have alpha > {sinks.epsilon}. In blocks 0..{first} they put {sink_before.sink_mass.mean():.0%} there"
       + (f", and already {early.sink_mass.min():.0%}-{early.sink_mass.max():.0%} in block(s) "
          f"{', '.join(map(str, early.layer))}: the first token is a sink before it holds a massive activation, so "
          "the massive activation is not what starts the sink (it may strengthen or keep it)." if len(early) else
          ": attention concentrates on the token only once it holds the massive activation, as the paper says."))

# %% [markdown]
# ## 2. Keys and values of the sink
#
# Why do queries attend to the massive token, and what do they get from it? `hook_k` and `hook_v` are
# `(batch, key_pos, n_kv_heads, d_head)`.

# %% [markdown]
# ### Exercise 3.2: value norms
#
# Return the norm of each KV head's value vector at position 0, and the mean norm of the values at the other
# positions, both of shape `(n_kv_heads,)`.

# %% [exercise difficulty=1 minutes=10]
def value_norms(model, prompt: str, *, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """((n_kv_heads,) |v| at position 0, (n_kv_heads,) mean |v| over the other positions)."""
    # EXERCISE
    # raise NotImplementedError("hook_v[0].norm(dim=-1): (pos, kv_head)")
    # SOLUTION
    name = f"blocks.{layer}.attn.hook_v"
    _, cache = model.run_with_cache(prompt, names_filter=name)
    norms = cache[name][0].norm(dim=-1)  # (pos, kv_head)
    return norms[0], norms[1:].mean(0)
    # END


# %%
checks.check_value_norms(value_norms, model)

# %%
after = slice(sinks.first_massive_layer + 1, None)
print(f"after block {sinks.first_massive_layer}: mean |v| {float(sinks.v_norm_sink[after].mean()):.2f} at the sink vs "
      f"{float(sinks.v_norm_other[after].mean()):.2f} elsewhere; mean |k| {float(sinks.k_norm_sink[after].mean()):.2f} "
      f"vs {float(sinks.k_norm_other[after].mean()):.2f}")

# %% [markdown]
# The sink is attended to a lot but writes little per unit of attention: its value is small.
#
# ## 3. The implicit bias (Eq. 2)
#
# `hook_z` is `(batch, pos, n_heads, d_head)`: each head's mix of values before `W_O`. Eq. 2 splits it into
# the part from the sink (here position 0) and the rest. With grouped-query attention, query head `h` reads
# KV head `h // (n_heads // n_kv_heads)`.

# %% [markdown]
# ### Exercise 3.3: split a head's output
#
# Return `(sink, rest)`, each `(pos, n_heads, d_head)`: `sink[q, h] = p[h, q, 0] * v[0, kv(h)]` and
# `rest[q, h] = sum_{i >= 1} p[h, q, i] * v[i, kv(h)]`. They must add up to `hook_z`.
#
# <details><summary>Hint</summary>
#
# `v.repeat_interleave(n_heads // n_kv_heads, dim=1)` gives one value per query head; then
# `torch.einsum("hqk,khd->qhd", pattern, v)` mixes them.
# </details>

# %% [exercise difficulty=3 minutes=20]
def attention_split(model, prompt: str, *, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2 at `layer`: (sink part from position 0, rest), each (pos, n_heads, d_head), summing to hook_z."""
    # EXERCISE
    # raise NotImplementedError("cache hook_pattern and hook_v, expand the KV heads, split the key axis at 0")
    # SOLUTION
    names = [f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.attn.hook_v"]
    _, cache = model.run_with_cache(prompt, names_filter=lambda n: n in names)
    pattern, v = cache[names[0]][0], cache[names[1]][0]  # (head, q, k), (k, kv_head, d_head)
    v = v.repeat_interleave(model.cfg.n_heads // v.shape[1], dim=1)  # (k, head, d_head)
    sink = torch.einsum("hq,hd->qhd", pattern[:, :, 0], v[0])
    rest = torch.einsum("hqk,khd->qhd", pattern[:, :, 1:], v[1:])
    return sink, rest
    # END


# %%
checks.check_attention_split(attention_split, model)

# %% [markdown]
# `implicit_bias` runs the same split in every layer after the massive activation appears, maps both parts
# through `W_O`, and measures how constant the sink part is across queries and prompts: its direction (cosine
# to the mean) and its size (`size_cv`, std / mean of its norm). Mind what can vary: with one sink token, the
# sink part of query `q` is `p_q0 v_0 W_O`, one vector `v_0 W_O` scaled by `p_q0`. Within a prompt its direction
# cannot change; across prompts only if `v_0` differs, which it cannot when position 0 is the same BOS token
# everywhere. Then it swaps the sink part for its mean, or removes it, and measures the loss.

# %%
bias = implicit_bias(model, PROMPTS)
print(bias)
bias.swap

# %%
swap = bias.swap.set_index("condition")
print(f"decomposition error {bias.max_error:.1e}; loss {swap.loss['original']:.3f} original, "
      f"{swap.loss['swapped']:.3f} with the sink part swapped for its mean ({swap.relative['swapped']:+.1%}), "
      f"{swap.loss['removed']:.3f} with it removed ({swap.relative['removed']:+.1%})")
size_cv = bias.size_cv if bias.size_cv is not None else torch.full_like(bias.bias_norm, float("nan"))
print(f"direction: mean cosine to the mean {float(bias.constancy.mean()):.3f}"
      + (f" (constant by construction: {bias.by_construction})" if bias.by_construction else "")
      + f"; size: varies by {float(size_cv.nanmean()):.0%} (CV over queries, head mean; layers from "
      f"{float(size_cv.nanmean(1).min()):.0%} to {float(size_cv.nanmean(1).max()):.0%})")

# %% [markdown]
# ### Question: a fixed vector?
#
# Is the sink part of each head's output a fixed vector, as the bias view says? Separate its direction from
# its size, say which of the two numbers above could have come out otherwise on these prompts, and what the
# swap and removal losses add.

# %% [answer]
answer((f"Its direction cannot vary here ({bias.by_construction}), so the cosine of "
        f"{float(bias.constancy.mean()):.3f} is no evidence. " if bias.by_construction else
        f"Its direction is nearly fixed: mean cosine {float(bias.constancy.mean()):.3f} to the mean over queries and "
        f"prompts, which could have come out lower because the first token (and so `v_0`) differs between the "
        f"prompts; within one prompt it is fixed by construction. ")
       + f"Its size is not fixed: it varies by {float(size_cv.nanmean()):.0%} across queries (head mean), because "
       "the attention `p_q0` on the sink varies by query. "
       + f"Swapping the part for its mean changes the loss by {swap.relative['swapped']:+.1%}; removing it by "
       f"{swap.relative['removed']:+.1%}. "
       + ("So the model depends on the part being there far more than on its exact size: a bias-like term, "
          "in a fixed direction with a query-dependent scale." if abs(swap.relative['removed'])
          > 3 * abs(swap.relative['swapped']) else
          "Swapping costs about as much as removing: the bias view does not hold up here."))

# %% [markdown]
# `swap_implicit_bias` is the same intervention as a context manager, for any prompt:

# %%
prompt = "The cat sat on the mat because it was tired."
with swap_implicit_bias(model, bias):
    swapped = float(model(prompt, return_type="loss"))
with swap_implicit_bias(model, bias, mode="remove"):
    removed = float(model(prompt, return_type="loss"))
print(f"{float(model(prompt, return_type='loss')):.3f} original, {swapped:.3f} swapped, {removed:.3f} removed")

# %% [markdown]
# ## Summary

# %%
Markdown(f"""
- After the massive activation appears (block {first}), heads put {sink_after.sink_mass.mean():.0%} of their
  attention on its token on average; before it, {sink_before.sink_mass.mean():.0%} (`attention_sinks`).
- The sink part of each head's output keeps {"one direction by construction" if bias.by_construction else
  f"a nearly fixed direction (cosine {float(bias.constancy.mean()):.3f})"} while its size varies by
  {float(size_cv.nanmean()):.0%} across queries; replacing it with its mean changes the loss by
  {swap.relative['swapped']:+.1%}, removing it by {swap.relative['removed']:+.1%} (`implicit_bias`,
  `swap_implicit_bias`).
""")

# %% [markdown]
# Tutorial 4 asks where the massive activation comes from, and which attention paths carry its effect.
