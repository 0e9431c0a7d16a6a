# %% [markdown]
# # Tutorial 2: massive activations are bias terms
#
# Tutorial 1 found one massive dimension at the first token of SmolLM2-135M, nearly constant across inputs.
# Sun et al. argue that such values act as **fixed but important biases**: set them to zero and the model
# collapses (LLaMA2-7B's perplexity goes from 5.5 to inf), set them to their mean over many inputs and
# nothing changes (Table 3). A control that zeroes as many ordinary activations changes nothing either.
#
# You will write the intervention as a hook, measure perplexity under it, compute the mean the paper
# swaps in, and then reproduce Table 3 with `mi_massive`. Learning objectives:
#
# - edit one residual entry during a forward pass with a hook, and read the loss;
# - compute perplexity over fixed-length chunks;
# - say why "set to the mean" leaves the model intact while "set to zero" breaks it.

# %% [imports]
import torch

from mi_massive import (bias_term_table, build_intervention, find_massive_activations, intervene, load_corpus,
                        load_model, massive_stats)
from mi_massive.perplexity import _chunks
from mi_massive.tutorial_checks import bias as checks

# %%
torch.set_grad_enabled(False)
model = load_model("smollm2-135m")
PROMPTS = [
    "Summer is warm. Winter is cold.",
    "The quick brown fox jumps over the lazy dog.",
    "In 1905, Albert Einstein published four papers that changed physics.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
]
found = find_massive_activations(model, PROMPTS)
found.summary()[["dim", "first_layer", "last_layer", "positions", "max_abs"]]

# %% [markdown]
# ## 1. Setting one activation
#
# A forward hook on `blocks.{layer}.hook_resid_post` receives the block output `(batch, pos, d_model)` and
# may return an edited copy; every later block then reads the edit.

# %% [markdown]
# ### Exercise 2.1: the loss with one entry set
#
# Return the mean next-token loss of `prompt` when the output of block `layer` has its entry
# `(pos, dim)` set to `value`. Use `model.run_with_hooks(prompt, return_type="loss", fwd_hooks=[(name, fn)])`.
#
# <details><summary>Hint</summary>
#
# The hook has the signature `fn(x, hook)`; set `x[:, pos, dim] = value` and return `x`.
# </details>

# %% [exercise difficulty=1 minutes=10]
def loss_with_entry_set(model, prompt: str, *, layer: int, pos: int, dim: int, value: float) -> float:
    """Mean next-token loss of `prompt` with block `layer`'s output at (pos, dim) set to `value`."""
    # EXERCISE
    # raise NotImplementedError("a hook on blocks.{layer}.hook_resid_post, then run_with_hooks")
    # SOLUTION
    def set_entry(x, hook):
        x[:, pos, dim] = value
        return x

    loss = model.run_with_hooks(prompt, return_type="loss", fwd_hooks=[(f"blocks.{layer}.hook_resid_post", set_entry)])
    return float(loss)
    # END


# %%
checks.check_loss_with_entry_set(loss_with_entry_set, model)

# %% [markdown]
# Zero the massive dimension where it appears, at the first token, and compare with zeroing an ordinary
# dimension of the same token:

# %%
dim, layer = found.dims[0], found.first_layer
prompt = PROMPTS[2]
clean = float(model(prompt, return_type="loss"))
zeroed = loss_with_entry_set(model, prompt, layer=layer, pos=0, dim=dim, value=0.0)
ordinary = loss_with_entry_set(model, prompt, layer=layer, pos=0, dim=(dim + 1) % model.cfg.d_model, value=0.0)
print(f"loss {clean:.2f} clean, {zeroed:.2f} with dim {dim} zeroed in block {layer}, {ordinary:.2f} with dim {dim + 1} zeroed")

# %% [markdown]
# ## 2. Perplexity
#
# Table 3 measures perplexity: `exp` of the mean next-token loss over text cut into chunks of a fixed
# number of tokens, each chunk scored after a BOS token.

# %% [markdown]
# ### Exercise 2.2: the perplexity of chunks
#
# `chunks` is a `(n_chunks, 1 + seq_len)` token tensor (BOS, then text). Return the perplexity of all
# chunks under whatever the model currently computes. Every chunk has the same length, so the mean over all
# predictions is the mean of the per-chunk means.

# %% [exercise difficulty=1 minutes=5]
def chunk_perplexity(model, chunks: torch.Tensor) -> float:
    """exp(mean next-token loss) over every prediction in `chunks`."""
    # EXERCISE
    # raise NotImplementedError("model(chunks, return_type='loss'), then exp")
    # SOLUTION
    return float(torch.exp(model(chunks, return_type="loss")))
    # END


# %%
checks.check_chunk_perplexity(chunk_perplexity, model)

# %% [markdown]
# The check also ran your function inside `intervene(model, iv)`: `build_intervention` finds the massive
# activations in calibration text and builds the edit, and `intervene` applies it to every forward pass in
# its body (the hooks always come off, and a hook that never fires raises). Score text held apart from the
# calibration text:

# %%
texts = load_corpus("wiki-en")
calibration, scored = texts[:8], texts[8:]
chunks = _chunks(model, scored, 64, 4, True)
zero = build_intervention(model, calibration, mode="zero")
print(zero)
clean = chunk_perplexity(model, chunks)
with intervene(model, zero):
    zeroed = chunk_perplexity(model, chunks)
print(f"perplexity {clean:.1f} clean, {zeroed:.4g} with the massive activations zeroed")

# %% [markdown]
# ## 3. Setting them to their mean
#
# If the massive values are constant biases, replacing them with their average over other inputs should
# cost nothing. The paper computes the mean without a BOS token (the first token then differs between
# inputs).

# %% [markdown]
# ### Exercise 2.3: the mean at the first token
#
# Return the mean over `texts` of block `layer`'s output at position 0, dimension `dim`, running each text
# without a BOS token.

# %% [exercise difficulty=1 minutes=5]
def mean_first_value(model, texts: list[str], *, layer: int, dim: int) -> float:
    """Mean over texts of block `layer`'s output at (pos 0, dim), texts run without BOS."""
    # EXERCISE
    # raise NotImplementedError("one run per text with prepend_bos=False, keep [0, 0, dim], average")
    # SOLUTION
    name = f"blocks.{layer}.hook_resid_post"
    values = [model.run_with_cache(model.to_tokens(t, prepend_bos=False), names_filter=name)[1][name][0, 0, dim]
              for t in texts]
    return float(torch.stack(values).mean())
    # END


# %%
checks.check_mean_first_value(mean_first_value, model)

# %% [markdown]
# `massive_stats` measures those means (and standard deviations) for every massive dimension and layer, with
# and without BOS; `build_intervention(mode="mean")` writes them in.

# %%
stats = massive_stats(model, calibration, progress=False)
stats.summary()

# %% [markdown]
# ## 4. Table 3
#
# `bias_term_table` puts it together: original perplexity, massive activations set to zero, set to their
# mean (both in the block where they appear), and the control (as many random ordinary dimensions zeroed at
# the same positions). Small settings here, so that it runs in seconds; the CLI (`mi-massive table3`) runs the
# full version.

# %%
table = bias_term_table(model, ("wiki-en",), seq_len=64, max_chunks=4, n_calibration=8)
table.to_dataframe()

# %%
row = table.to_dataframe().iloc[0]
print(f"SmolLM2-135M on wiki-en: perplexity {row.original:.1f} original, {row.zero:.3g} zeroed "
      f"({row.zero / row.original:.0f}x), {row['mean']:.1f} with the mean, {row.control:.1f} for the control.")

# %% [markdown]
# As in the paper: zeroing a handful of activations destroys the model, while their mean keeps it intact,
# and zeroing as many ordinary activations does nothing. Massive activations carry no information about the
# input; the model needs their *value*, the way it needs a bias.
#
# ## Summary
#
# - `loss_with_entry_set` is an intervention on one residual entry; `build_intervention` + `intervene` is
#   the same idea for every massive entry, found per input, with the hooks always removed.
# - Perplexity under zero / mean / control (`bias_term_table`) is the paper's evidence for the bias view.
#
# Tutorial 3 follows the bias into attention: the massive token becomes an attention sink, and its value
# update is the bias.
