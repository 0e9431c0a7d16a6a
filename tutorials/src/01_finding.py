# %% [markdown]
# # Tutorial 1: finding massive activations
#
# Sun, Chen, Kolter and Liu (2024), *Massive Activations in Large Language Models*, found that a handful of
# residual-stream entries in almost every LLM are **massive**: about 10,000 times larger than the typical entry.
# They sit in a few fixed dimensions, at the first token (and a few delimiter tokens), appear abruptly in one
# early layer, stay roughly constant through the middle of the network, and barely depend on the input.
#
# In this tutorial you find them yourself in **SmolLM2-135M** (30 layers, `d_model` 576), then check your
# code against `mi_massive`. By the end you can:
#
# - read any block's output (`blocks.{layer}.hook_resid_post`) with a hook or a cache;
# - apply the paper's definition of a massive activation;
# - draw the layer profile of the paper's Figure 2 and say where the massive values appear;
# - say which tokens hold them, and how much they change across inputs.
#
# Each exercise has a difficulty, a time estimate, a stub to fill in and a check right below it. The
# solution is folded away under the check: try first, then compare.

# %% [imports]
import torch

from mi_massive import find_massive_activations, layer_profile, load_model, viz
from mi_massive.tutorial_checks import finding as checks

# %%
torch.set_grad_enabled(False)  # we only read activations
model = load_model("smollm2-135m")
PROMPTS = [
    "Summer is warm. Winter is cold.",
    "The quick brown fox jumps over the lazy dog.",
    "In 1905, Albert Einstein published four papers that changed physics.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
]
model.cfg.n_layers, model.cfg.d_model, model.to_str_tokens(PROMPTS[0])

# %% [markdown]
# Note the first token: `load_model` follows the model's convention and prepends a BOS token
# (`<|im_start|>` for SmolLM2). Keep an eye on it.
#
# ## 1. Looking at the residual stream
#
# The residual stream after block `layer` is the activation at the hook `blocks.{layer}.hook_resid_post`,
# a `(batch, pos, d_model)` tensor. `model.run_with_cache(prompt, names_filter=...)` returns the logits and
# a cache of the hooks you ask for.

# %% [markdown]
# ### Exercise 1.1: read one block's output
#
# Return the block output of `layer` for a single prompt, without the batch dimension.
#
# <details><summary>Hint</summary>
#
# `names_filter` takes a hook name (or a function of the name); index the cache with the same name and take
# batch element 0.
# </details>

# %% [exercise difficulty=1 minutes=5]
def residual_stream(model, prompt: str, layer: int) -> torch.Tensor:
    """The (pos, d_model) output of block `layer` for `prompt` (BOS prepended as the model does)."""
    # EXERCISE
    # raise NotImplementedError("read blocks.{layer}.hook_resid_post")
    # SOLUTION
    name = f"blocks.{layer}.hook_resid_post"
    _, cache = model.run_with_cache(prompt, names_filter=name)
    return cache[name][0]
    # END


# %%
checks.check_residual_stream(residual_stream, model)

# %% [markdown]
# Now look at the magnitudes. The largest entries of a middle layer, and the median for scale:

# %%
x = residual_stream(model, PROMPTS[0], 15)  # (pos, d_model)
top = x.abs().flatten().topk(5)
for value, index in zip(top.values, top.indices):
    pos, dim = divmod(int(index), x.shape[1])
    print(f"pos {pos} ({model.to_str_tokens(PROMPTS[0])[pos]!r}), dim {dim}: {float(value):,.0f}")
print(f"median |x|: {float(x.abs().median()):.2f}")

# %% [markdown]
# One entry is four orders of magnitude above the median. The paper's Figure 1 draws this as a 3-D surface:
# `|x|` over tokens and dimensions. Rotate it; hover to read a value.

# %%
viz.magnitudes_3d(model, PROMPTS[0], 15)

# %% [markdown]
# ## 2. The paper's definition
#
# Sun et al. call an activation massive when its magnitude is above 100 **and** at least 1,000 times the
# median magnitude of its layer's hidden state (the median over every position and dimension of that
# prompt's block output). The absolute threshold removes small values in layers whose median is tiny; the
# ratio removes large values in layers where everything is large.

# %% [markdown]
# ### Exercise 1.2: the paper's rule
#
# Given one block output `x` of shape `(pos, d_model)`, return the set of `(pos, dim)` pairs that are
# massive under `threshold` and `ratio`. Use strict `>` for the threshold and `>=` for the ratio, as the
# library does. The check calls it with other thresholds and ratios too.

# %% [exercise difficulty=1 minutes=10]
def massive_entries(x: torch.Tensor, *, threshold: float, ratio: float) -> set[tuple[int, int]]:
    """(pos, dim) pairs with |x| > threshold and |x| >= ratio x the median |x| over all of x."""
    # EXERCISE
    # raise NotImplementedError("build a boolean mask, then take its nonzero indices")
    # SOLUTION
    a = x.abs()
    mask = (a > threshold) & (a >= ratio * a.median())
    return {(int(p), int(d)) for p, d in mask.nonzero()}
    # END


# %%
checks.check_massive_entries(massive_entries, model)

# %% [markdown]
# The library applies the same rule to every block output of every prompt and returns a
# `MassiveActivations` result: a sentence as its repr, a table per massive dimension, and a view.

# %%
found = find_massive_activations(model, PROMPTS)
found

# %%
found.summary()

# %%
found.show()

# %% [markdown]
# ## 3. Where in depth: the layer profile
#
# The paper's Figure 2 plots, for each layer, the three largest magnitudes and the median. Massive
# activations show up as a sudden jump of the top-1 curve in one early layer while the median stays flat.

# %% [markdown]
# ### Exercise 1.3: the layer profile of one prompt
#
# Return the `k` largest `|x|` and the median `|x|` of every block output (over all positions and
# dimensions of the prompt), as tensors of shape `(n_layers, k)` and `(n_layers,)`.
#
# <details><summary>Hint</summary>
#
# `names_filter` also accepts a function `lambda name: name.endswith("hook_resid_post")`. `torch.topk` on
# the flattened magnitudes gives the top values.
# </details>

# %% [exercise difficulty=2 minutes=10]
def layer_top_magnitudes(model, prompt: str, *, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(top (n_layers, k), median (n_layers,)) of |x| at each block output for one prompt."""
    # EXERCISE
    # raise NotImplementedError("cache every hook_resid_post, then topk and median per layer")
    # SOLUTION
    _, cache = model.run_with_cache(prompt, names_filter=lambda name: name.endswith("hook_resid_post"))
    mags = [cache[f"blocks.{layer}.hook_resid_post"][0].abs().flatten() for layer in range(model.cfg.n_layers)]
    top = torch.stack([m.topk(k).values for m in mags])
    median = torch.stack([m.median() for m in mags])
    return top, median
    # END


# %%
checks.check_layer_top_magnitudes(layer_top_magnitudes, model)

# %% [markdown]
# `layer_profile` averages the same statistics over prompts; its `jump_layer` is the layer whose top-1
# magnitude grows most over the previous layer's.

# %%
profile = layer_profile(model, PROMPTS)
print(profile)
print(f"the top-1 magnitude grows {float(profile.top[profile.jump_layer, 0] / profile.top[profile.jump_layer - 1, 0]):.0f}x "
      f"in layer {profile.jump_layer}; the median stays between {float(profile.median.min()):.2f} and "
      f"{float(profile.median.max()):.2f}")
profile.show()

# %% [markdown]
# ## 4. Where in the sequence
#
# In LLaMA2-7B the paper finds massive activations at the starting token and at the first period or newline.
# Which tokens hold them in SmolLM2? And is it the BOS token itself, or whichever token comes first? Drop the
# BOS and see.

# %%
for bos in (True, False):
    found = find_massive_activations(model, PROMPTS, prepend_bos=bos)
    tokens = sorted({row.token for row in found.sites().itertuples()})
    print(f"prepend_bos={bos}: {found}\n    tokens holding them: {tokens}")

# %% [markdown]
# ## 5. Constancy across inputs
#
# The paper's last observation: massive values are nearly constant across inputs, so they behave like fixed
# biases (tutorial 2 tests that claim causally).

# %% [markdown]
# ### Exercise 1.4: one entry across prompts
#
# Return the value (not the magnitude) of the residual entry `(layer, pos, dim)` for each prompt, as a
# tensor of shape `(n_prompts,)`. Prompts have different lengths, so run them one at a time (or pad with
# care). Pass `prepend_bos` on to the model.

# %% [exercise difficulty=1 minutes=10]
def massive_values(model, prompts: list[str], *, layer: int, dim: int, pos: int, prepend_bos: bool) -> torch.Tensor:
    """Value of block `layer`'s output at (pos, dim) for each prompt: shape (n_prompts,)."""
    # EXERCISE
    # raise NotImplementedError("one run_with_cache per prompt, then index [0, pos, dim]")
    # SOLUTION
    name = f"blocks.{layer}.hook_resid_post"
    values = []
    for prompt in prompts:
        tokens = model.to_tokens(prompt, prepend_bos=prepend_bos)
        _, cache = model.run_with_cache(tokens, names_filter=name)
        values.append(cache[name][0, pos, dim])
    return torch.stack(values)
    # END


# %%
checks.check_massive_values(massive_values, model)

# %% [markdown]
# How constant is it? Read the massive dimension at the first position of each prompt, without a BOS (so
# the first token differs), and compare its spread (std / |mean|) with its size.

# %%
dim = found.dims[0]
values = massive_values(model, PROMPTS, layer=15, dim=dim, pos=0, prepend_bos=False)
first_tokens = [model.to_str_tokens(p, prepend_bos=False)[0] for p in PROMPTS]
print(f"dim {dim} at layer 15 for first tokens {first_tokens}: {[round(float(v)) for v in values]}")
print(f"std / |mean| = {float(values.std() / values.mean().abs()):.3f}")

# %% [markdown]
# Without a BOS the first token differs between prompts, yet the massive value changes by only a small fraction
# of its size.
#
# ## Summary
#
# - A massive activation is `|x| > 100` and `>= 1000 x` the layer's median `|x|`
#   (`find_massive_activations`).
# - In SmolLM2-135M there is one massive dimension at the first position; the layer profile shows where it
#   is written, and it stays until the last layers (`layer_profile`).
# - It is the first position that holds it, BOS or not, and its value hardly depends on the input.
#
# Next, tutorial 2 asks what these values *do*: setting them to zero, or to their mean, and measuring
# perplexity.
