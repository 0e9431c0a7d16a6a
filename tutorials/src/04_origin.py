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
import torch
from IPython.display import Markdown

from mi_massive import find_massive_activations, load_model, path_patch, trace_origin
from mi_massive.tutorial_checks import answer
from mi_massive.tutorial_checks import origin as checks

# %%
torch.set_grad_enabled(False)
model = load_model("smollm2-135m")
PROMPT = "Summer is warm. Winter is cold."
BOS = True  # your functions take strings, which TransformerLens runs after a BOS token: the library calls match
found = find_massive_activations(model, PROMPT, prepend_bos=BOS)
print(found)
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
share = float(writes[writer] / writes[: writer + 1].sum())  # of what blocks 0..writer write there together
print(f"block {writer} adds {float(writes[writer]):,.0f} of dim {dim} ({share:.0%} of what blocks 0..{writer} write "
      f"there); the next largest write is {float(writes.topk(2).values[1]):,.0f}")

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
Markdown(f"Block {writer}'s top neuron {n} gives {float(top.values[0] / parts.sum()):.0%} of its MLP's write to dim "
         f"{dim}, the top three {float(top.values.sum() / parts.sum()):.0%}; its down-projection weight is the "
         f"{rank}{'st' if rank == 1 else 'nd' if rank == 2 else 'rd' if rank == 3 else 'th'} largest of the matrix.")

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
# Key figure: trace_origin's picture of who writes the massive activation (components, neurons, causal checks)
origin = trace_origin(model, PROMPT, prepend_bos=BOS)
print(origin)
origin.show()

# %%
origin.causal

# %% [markdown]
# ### Question: is it a *super* weight?
#
# Yu et al. call a weight a super weight when it is one of the largest of its matrix and zeroing it alone
# removes the massive activation and damages the model. Read `origin.causal`: does zeroing this one weight
# do that here, compared with zeroing the top neurons and with the random-neuron control?

# %% [answer]
c = origin.causal.set_index("ablation")
sw_row = c[c.index.str.startswith("zero super weight")].iloc[0]
neurons_row = c[c.index.str.startswith("zero top")].iloc[0]
random_rows = c[c.index.str.contains("random")]
clean_row = c.iloc[0]
answer(f"Clean: value {clean_row.massive_value:,.0f}, loss {clean_row.loss:.2f}. Zeroing the one weight "
       f"{origin.super_weight} leaves the value at {sw_row.massive_value:,.0f} "
       f"({sw_row.massive_value / clean_row.massive_value:.0%} of clean) and the loss at {sw_row.loss:.2f}; zeroing the "
       f"top neurons: {neurons_row.massive_value:,.0f} and {neurons_row.loss:.2f}"
       + (f"; random neurons (control): loss {random_rows.loss.min():.2f}-{random_rows.loss.max():.2f}. "
          if len(random_rows) else ". ")
       + ("So yes: one weight of rank " + str(rank) + " carries most of the value, and the model needs it."
          if sw_row.massive_value < 0.5 * clean_row.massive_value and sw_row.loss > clean_row.loss + 0.1 else
          "So not in the strong sense: zeroing it alone does not remove the value and break the model; "
          "the value is shared by more weights (see `origin.search`)."))

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
pp = path_patch(model, PROMPT, prepend_bos=BOS)
print(pp)
pp.summary()

# %%
summary = pp.summary().set_index("path")
print(f"zeroing the massive activation moves the loss {pp.clean_metric:.2f} -> {pp.corrupted_metric:.2f}; "
      + ", ".join(f"{p} alone carries {summary.share[p]:.0%}" for p in ("k", "v", "q", "direct")))
pp.to_dataframe().sort_values("effect", ascending=False).head(5)

# %% [markdown]
# ### Question: which route?
#
# Which single route carries most of the damage? Do the single-route shares add up to 100%, and what does it
# mean if they do not?

# %% [answer]
singles = {p: summary.share[p] for p in ("k", "v", "q", "direct") if p in summary.index}
best = max(singles, key=lambda p: singles[p])
names = {"k": "the keys", "v": "the values", "q": "the queries", "direct": "the direct path to the unembedding"}
answer(f"{names[best].capitalize()} alone carry {singles[best]:.0%} of the loss increase "
       f"({pp.clean_metric:.2f} -> {pp.corrupted_metric:.2f}); the four single routes add up to "
       f"{sum(singles.values()):.0%}"
       + (" and all routes together give " + f"{summary.share['all']:.0%}" if "all" in summary.index else "")
       + (". Far from 100%: the routes interact (one route's damage depends on the others still being "
          "clean), so a share is what that route does alone, not a slice of a pie."
          if abs(sum(singles.values()) - 1) > 0.2 else ". Close to 100%: the routes act nearly independently."))

# %% [markdown]
# ## Summary

# %%
Markdown(f"""
- Block {writer} writes {share:.0%} of what blocks 0..{writer} write to dim {dim}; its top neuron {n} gives
  {float(top.values[0] / parts.sum()):.0%} of that MLP's part, through W_out[{n}, {dim}] (|w| rank {rank}); zeroing
  that weight leaves {sw_row.massive_value / clean_row.massive_value:.0%} of the value and moves the loss
  {clean_row.loss:.2f} -> {sw_row.loss:.2f} (`trace_origin`).
- Path patching splits the damage of removing it by the routes that read it (`path_patch`): through the
  keys (does the token stay a sink?), the values (the implicit bias of tutorial 3), the queries, or directly
  into the unembedding. Here {names[best]} carry the most alone ({singles[best]:.0%}).
""")
