# %% [markdown]
# # Tutorial 4: where massive activations come from, and which paths carry them
#
# Sun et al. show that massive activations appear abruptly in one early block. Yu et al. (2024, "The Super
# Weight in Large Language Models") traced them further: a couple of MLP neurons of that block write them,
# through a **single weight** of the down projection, and zeroing that one weight is enough to break the
# model. Then: by which route does the massive activation reach the output? Path patching gives the
# corrupted value to one attention path (the keys, values or queries of one head) at a time.
#
# Learning objectives:
#
# - split a residual entry into what each block wrote, and find the writer;
# - split the writer's MLP output into neurons, and find the super weight;
# - edit a weight inside a context that always restores it;
# - patch one KV head's value from a corrupted run into the clean run.

# %% [imports]
from contextlib import contextmanager

import torch

from mi_massive import find_massive_activations, load_model, path_patch, trace_origin
from mi_massive.tutorial_checks import origin as checks

# %%
torch.set_grad_enabled(False)
model = load_model("smollm2-135m")
PROMPT = "Summer is warm. Winter is cold."
found = find_massive_activations(model, PROMPT)
found.sites()

# %% [markdown]
# ## 1. Which block writes it?
#
# Block `l` adds `resid_post[l] - resid_pre[l]` to the residual stream (its attention plus its MLP).

# %% [markdown]
# ### Exercise 4.1: what each block adds
#
# Return, for every block, what it adds to the residual entry `(pos, dim)`: shape `(n_layers,)`.

# %% [exercise difficulty=1 minutes=10]
def block_writes(model, prompt: str, *, pos: int, dim: int) -> torch.Tensor:
    """(n_layers,) resid_post - resid_pre of every block at (pos, dim)."""
    # EXERCISE
    # raise NotImplementedError("cache hook_resid_pre and hook_resid_post of every block")
    # SOLUTION
    _, cache = model.run_with_cache(prompt, names_filter=lambda n: n.endswith(("hook_resid_pre", "hook_resid_post")))
    return torch.stack([cache[f"blocks.{l}.hook_resid_post"][0, pos, dim] - cache[f"blocks.{l}.hook_resid_pre"][0, pos, dim]
                        for l in range(model.cfg.n_layers)])
    # END


# %%
checks.check_block_writes(block_writes, model)

# %%
dim = found.dims[0]
writes = block_writes(model, PROMPT, pos=0, dim=dim)
writer = int(writes.argmax())
print(f"block {writer} adds {float(writes[writer]):,.0f} of dim {dim}; the next largest write is "
      f"{float(writes.topk(2).values[1]):,.0f}")

# %% [markdown]
# ## 2. Which neurons, which weight?
#
# The MLP output is `mlp_post @ W_out`: neuron `n` adds `mlp_post[pos, n] * W_out[n, dim]` to dimension
# `dim` (`blocks.{layer}.mlp.hook_post` is the neuron activation; `model.blocks[layer].mlp.W_out` is
# `(d_mlp, d_model)`).

# %% [markdown]
# ### Exercise 4.2: neuron contributions
#
# Return each neuron's part of block `layer`'s MLP write to `(pos, dim)`, shape `(d_mlp,)`.

# %% [exercise difficulty=2 minutes=10]
def neuron_contributions(model, prompt: str, *, layer: int, pos: int, dim: int) -> torch.Tensor:
    """(d_mlp,) activation x W_out[neuron, dim] of every neuron of block `layer` at `pos`."""
    # EXERCISE
    # raise NotImplementedError("hook_post at pos, times the dim column of W_out")
    # SOLUTION
    name = f"blocks.{layer}.mlp.hook_post"
    _, cache = model.run_with_cache(prompt, names_filter=name)
    return cache[name][0, pos] * model.blocks[layer].mlp.W_out[:, dim]
    # END


# %%
checks.check_neuron_contributions(neuron_contributions, model)

# %%
parts = neuron_contributions(model, PROMPT, layer=writer, pos=0, dim=dim)
top = parts.topk(3)
print(f"of {float(parts.sum()):,.0f} written by block {writer}'s MLP: " + ", ".join(
    f"neuron {int(n)} {float(v):,.0f}" for v, n in zip(top.values, top.indices)))
W_out = model.blocks[writer].mlp.W_out
n = int(top.indices[0])
rank = int((W_out.abs() > W_out[n, dim].abs()).sum()) + 1
print(f"its weight W_out[{n}, {dim}] = {float(W_out[n, dim]):.3f} has |w| rank {rank} of {W_out.numel():,} in that matrix")

# %% [markdown]
# ### Exercise 4.3: zero one weight, and put it back
#
# Weights of the bridge are views of the model's parameters: writing into them changes the model. Return the
# value of block `layer`'s output at `(pos 0, dim=row)` and the loss with `W_out[col, row]` of block
# `layer` set to zero, and **restore the weight** even if the forward pass raises (`try` / `finally`, or a
# `@contextmanager`).

# %% [exercise difficulty=2 minutes=15]
def without_weight(model, prompt: str, *, layer: int, row: int, col: int) -> tuple[float, float]:
    """(x[layer, pos 0, row], loss) with block `layer`'s W_out[col, row] zeroed; the weight is restored."""
    # EXERCISE
    # raise NotImplementedError("save W_out[col, row], zero it, run with a cache, restore in finally")
    # SOLUTION
    W = model.blocks[layer].mlp.W_out
    saved = W[col, row].clone()
    name = f"blocks.{layer}.hook_resid_post"
    try:
        W[col, row] = 0.0
        loss, cache = model.run_with_cache(prompt, names_filter=name, return_type="loss")
    finally:
        W[col, row] = saved
    return float(cache[name][0, 0, row]), float(loss)
    # END


# %%
checks.check_without_weight(without_weight, model)

# %% [markdown]
# `trace_origin` does all of this at once: the exact split into components, the writing block, its top
# neurons, the super weight, what drives the top neuron, and the causal checks (zero the top neurons, zero the
# super weight, random neurons as a control, and a search that zeroes the next strongest weight).

# %%
origin = trace_origin(model, PROMPT)
print(origin)
origin.causal

# %% [markdown]
# ## 3. Which paths carry it?
#
# Corrupt the massive activation (zero it where it appears) and let only one receiver read the corrupted
# residual of the massive token: the value of one KV head in one later block, say. The loss of that run,
# against the clean loss, says how much of the damage flows through that receiver.

# %% [markdown]
# ### Exercise 4.4: patch one value
#
# `sites` lists `(layer, pos, dim)` entries to zero in the corrupted run (in the output of block `layer`).
# Run the corrupted model and keep `blocks.{layer}.attn.hook_v`; then run the clean model with the value of
# KV head `kv_head` at the sites' positions replaced by the corrupted one. Return the clean run's loss.

# %% [exercise difficulty=3 minutes=20]
def patched_value_loss(model, prompt: str, *, sites: list, layer: int, kv_head: int) -> float:
    """Loss of the clean run when KV head `kv_head` of block `layer` reads the corrupted value at the sites."""
    # EXERCISE
    # raise NotImplementedError("corrupt with resid_post hooks, cache hook_v; then patch it into a clean run")
    # SOLUTION
    def zero(pos, dim):
        def fn(x, hook):
            x[:, pos, dim] = 0.0
            return x
        return fn

    corrupt = [(f"blocks.{l}.hook_resid_post", zero(p, d)) for l, p, d in sites]
    name = f"blocks.{layer}.attn.hook_v"
    corrupted = {}

    def keep(x, hook):
        corrupted["v"] = x.clone()

    model.run_with_hooks(prompt, fwd_hooks=corrupt + [(name, keep)])
    positions = sorted({p for _, p, _ in sites})

    def patch(x, hook):
        x[:, positions, kv_head] = corrupted["v"][:, positions, kv_head]
        return x

    return float(model.run_with_hooks(prompt, return_type="loss", fwd_hooks=[(name, patch)]))
    # END


# %%
checks.check_patched_value_loss(patched_value_loss, model)

# %% [markdown]
# `path_patch` runs every receiver (K, V of each KV head, Q of each head, in every block after the massive
# activation, and the direct path to the unembedding) in a few batched passes:

# %%
pp = path_patch(model, PROMPT)
print(pp)
pp.summary()

# %%
summary = pp.summary().set_index("path")
print(f"zeroing the massive activation moves the loss {pp.clean_metric:.2f} -> {pp.corrupted_metric:.2f}; "
      + ", ".join(f"{p} alone carries {summary.share[p]:.0%}" for p in ("k", "v", "q", "direct")))
pp.to_dataframe().sort_values("effect", ascending=False).head(5)

# %% [markdown]
# ## Summary
#
# - One block writes the massive activation, mostly through two MLP neurons; one down-projection weight
#   carries most of it, and zeroing it shrinks the value and raises the loss (`trace_origin`).
# - Path patching splits the damage of removing it by the routes that read it (`path_patch`): through the
#   keys (does the token stay a sink?), the values (the implicit bias of tutorial 3), the queries, or
#   directly into the unembedding. The shares printed above say which route matters in SmolLM2.
