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
# Each exercise has a difficulty, a time estimate, a stub to fill in and a check right below it; the
# solutions are in `01_finding_solutions.ipynb`. Questions ask you to interpret a result: answer them before
# you unfold the answer (it is computed from the result above it, so it describes what *your* run shows).

# %% [imports]
import torch
from IPython.display import Markdown

from mi_massive import find_massive_activations, layer_magnitudes, layer_profile, load_model
from mi_massive.tutorial_checks import answer
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
# Note the first token: TransformerLens's string methods (`to_tokens`, `to_str_tokens`, `run_with_cache`)
# prepend a BOS token by default (`<|im_start|>` for SmolLM2), and your functions below see it. mi_massive's
# functions instead do what the model's own tokenizer does unless you pass `prepend_bos=` (each result says
# which it used). Whether the BOS token matters is a question of section 4: keep an eye on it.
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

# %%
ratios = top.values / x.abs().median()
big = sorted({int(i) % x.shape[1] for i, r in zip(top.indices, ratios) if r >= 1000})
Markdown(f"The largest entry is {float(ratios[0]):,.0f} times the median; {len(big)} dimension(s) of the top five "
         f"are at least 1,000 times it: {big}.")

# %% [markdown]
# The paper's Figure 1 draws this as a 3-D surface: `|x|` over tokens and dimensions. Rotate it; hover to
# read a value.

# %%
layer_magnitudes(model, PROMPTS[0], 15).show()

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
# ### Question: how many massive dimensions, and where?
#
# Read the summary above. How many dimensions are massive, at which positions and in which layers? Are they
# equally large, and do they occur in every prompt?

# %% [answer]
s1 = found.summary()
listed = lambda v: v if isinstance(v, str) else ", ".join(map(str, v))  # noqa: E731  ("all positions" for a feature)
parts = [f"dim {int(r.dim)} at position(s) {listed(r.positions)} ({listed(r.tokens)}), layers "
         f"{int(r.first_layer)}..{int(r.last_layer)}, |x| up to {r.max_abs:,.0f}, in {int(r.n_prompts)} of "
         f"{len(PROMPTS)} prompts" for r in s1.itertuples()]
answer(f"{len(s1)} massive dimension(s) ({found}): " + "; ".join(parts) + ". "
       + (f"The largest is {s1.max_abs.max() / s1.max_abs.min():.0f} times the smallest, so 'the' massive "
          "activation is really one dominant dimension with smaller companions." if len(s1) > 1 else
          "Only one dimension passes the rule under these conditions."))

# %% [markdown]
# ## 3. Where in depth: the layer profile
#
# The paper's Figure 2 plots, for each layer, the three largest magnitudes and the median. Massive
# activations show up as a sudden jump of the top-1 curve in one early layer; the paper reports that the
# median stays small. Check both claims here.

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
# Key figure: the layer profile (paper Fig. 2), top-3 and median |x| of every block's output
profile = layer_profile(model, PROMPTS)
print(profile)
profile.show()

# %% [markdown]
# ### Question: does the median stay flat?
#
# In the plot above (log scale), follow the median curve from the first to the last layer, and the top-1
# curve after its jump. Does the median stay flat? What happens to the ratio top-1 / median in the last
# layers, and what does that mean for the paper's "1,000 times the median" part of the rule there?

# %% [answer]
j, med, top1 = profile.jump_layer, profile.median, profile.top[:, 0]
ratio = top1 / med
answer(f"The top-1 magnitude grows {float(top1[j] / top1[j - 1]):.0f}x in layer {j}, to {float(top1[j]):,.0f}. "
       f"The median does {'not ' if med.max() / med.min() > 2 else ''}stay flat: it goes from "
       f"{float(med.min()):.2f} to {float(med.max()):.2f} ({float(med.max() / med.min()):.0f}x) "
       f"{'rising with depth' if int(med.argmax()) > int(med.argmin()) else 'falling with depth'}. So the ratio "
       f"top-1 / median falls from {float(ratio[j]):,.0f} in layer {j} to {float(ratio[-1]):,.0f} in the last layer: "
       + ("below 1,000, so in the last layer the ratio part of the rule, not the threshold, decides that nothing "
          "there is massive any more." if ratio[-1] < 1000 else "still above 1,000, so the rule keeps flagging it."))

# %% [markdown]
# ## 4. Where in the sequence
#
# In LLaMA2-7B the paper finds massive activations at the starting token and at the first period or newline.
# Which tokens hold them in SmolLM2? And is it the BOS token itself, or whichever token comes first? Drop the
# BOS and see.

# %%
scans = {bos: find_massive_activations(model, PROMPTS, prepend_bos=bos) for bos in (True, False)}
for bos, scan in scans.items():
    sites = scan.sites()
    print(f"prepend_bos={bos}: {scan}\n    positions {sorted(set(map(int, sites.pos)))}, tokens {sorted(set(sites.token))}")

# %% [markdown]
# ### Exercise 1.4: token or position?
#
# Interpret the two scans above: what holds the massive activations of SmolLM2 on these prompts? Return
# one of `"the BOS token"` (they sit on BOS and vanish or move without it), `"the first position"` (they sit
# at position 0 whatever token is there) or `"the first delimiter"`. The check shows the evidence it used.

# %% [exercise difficulty=1 minutes=5]
def holder() -> str:
    """What the scans with and without BOS say holds the massive activations (one of checks.HOLDERS)."""
    # EXERCISE
    # raise NotImplementedError("read the positions and tokens printed above")
    # SOLUTION
    return "the first position"
    # END


# %%
checks.check_holder(holder, model, PROMPTS)

# %% [markdown]
# ## 5. Constancy across inputs
#
# The paper's last observation: massive values are nearly constant across inputs, so they behave like fixed
# biases (tutorial 2 tests that claim causally).

# %% [markdown]
# ### Exercise 1.5: one entry across prompts
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
# the first token differs), and compare its spread (std / mean |x|) with an ordinary dimension's at the same
# position.

# %%
dim = scans[False].dims[0]
first_tokens = [model.to_str_tokens(p, prepend_bos=False)[0] for p in PROMPTS]
name = "blocks.15.hook_resid_post"
x0 = torch.stack([model.run_with_cache(model.to_tokens(p, prepend_bos=False), names_filter=name)[1][name][0, 0]
                  for p in PROMPTS])  # (prompt, d_model): block 15's output at position 0, no BOS
ordinary = int(x0.abs().mean(0).argsort()[model.cfg.d_model // 2])  # a dimension of median size there
values, others = x0[:, dim], x0[:, ordinary]
cv = lambda v: float(v.std() / v.abs().mean())  # noqa: E731  (spread relative to the entry's size)
print(f"dim {dim} at layer 15 for first tokens {first_tokens}: {[round(float(v)) for v in values]}")
print(f"std / mean |x|: {cv(values):.3f} for dim {dim}, {cv(others):.3f} for the ordinary dim {ordinary} "
      f"(values {[round(float(v), 2) for v in others]})")

# %% [markdown]
# ### Question: constant across inputs?
#
# Without a BOS the first token differs between prompts. Is the massive value nearly constant across them?
# Compare its relative spread with the ordinary dimension's. What would the same comparison show *with* a
# BOS token, and why would that be no evidence at all?

# %% [answer]
answer(f"Over {len(PROMPTS)} different first tokens ({', '.join(map(repr, first_tokens))}) dim {dim} varies by "
       f"{cv(values):.1%} of its size ({float(values.min()):,.0f} to {float(values.max()):,.0f}), the ordinary dim "
       f"{ordinary} by {cv(others):.0%}: "
       + ("the massive value is far more constant than an ordinary one, although the token under it changes. "
          if cv(values) < cv(others) / 3 else "not clearly more constant than an ordinary entry. ")
       + "With a BOS token, position 0 is the same token in every prompt and (causal attention) sees only itself, "
       "so its value is identical in every prompt by construction: a spread of 0 there says nothing about inputs.")

# %% [markdown]
# ## Summary

# %%
s1 = scans[False].summary()
at_first = all(bool((scan.sites().pos == 0).all()) for scan in scans.values())
Markdown(f"""
- A massive activation is `|x| > 100` and `>= 1000 x` the layer's median `|x|` (`find_massive_activations`).
- In SmolLM2-135M on these prompts without BOS: {len(s1)} massive dimension(s) ({', '.join(map(str, s1.dim))}),
  appearing in layer {scans[False].first_layer}; with BOS: {len(scans[True].summary())}
  ({', '.join(map(str, scans[True].summary().dim))}). The layer profile jumps in layer {profile.jump_layer}
  while the median grows {float(profile.median.max() / profile.median.min()):.0f}x with depth (`layer_profile`).
- {"They sit at position 0 with and without BOS: the first position holds them, whatever token is there"
   if at_first else "They do not sit at position 0 in both scans (see section 4)"}; without BOS dim {dim} varies by
  {cv(values):.1%} across inputs against {cv(others):.0%} for an ordinary dimension.
""")

# %% [markdown]
# Next, tutorial 2 asks what these values *do*: setting them to zero, or to their mean, and measuring
# perplexity.
