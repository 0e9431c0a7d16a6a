# %% [markdown]
# # Tutorial 2: massive activations are bias terms
#
# Tutorial 1 found a dominant massive dimension at the first position of SmolLM2-135M, nearly constant across
# inputs without a BOS token. Sun et al. argue that such values act as **fixed but important biases**: set them to zero and the model
# collapses (LLaMA2-7B's perplexity goes from 5.5 to inf), set them to their mean over many inputs and
# nothing changes (Table 3). A control that zeroes as many ordinary activations changes nothing either.
#
# You will write the intervention as a hook, measure perplexity under it, compute the mean the paper
# swaps in, and then reproduce Table 3 with `mi_massive`. Learning objectives:
#
# - edit one residual entry during a forward pass with a hook, and read the loss;
# - compute perplexity over fixed-length chunks;
# - say why "set to the mean" leaves the model intact while "set to zero" breaks it, and under which
#   condition that comparison is evidence at all (with or without a BOS token).

# %% [imports]
import torch
from IPython.display import Markdown

from mi_massive import (bias_term_table, build_intervention, find_massive_activations, intervene, load_corpus,
                        load_model, massive_stats)
from mi_massive.tutorial_checks import answer
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
found = find_massive_activations(model, PROMPTS, prepend_bos=True)  # as your hooks see the prompts (BOS first)
print(found)
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
print(f"loss {clean:.2f} clean, {zeroed:.2f} with dim {dim} zeroed in block {layer}, {ordinary:.2f} with dim "
      f"{(dim + 1) % model.cfg.d_model} zeroed")

# %% [markdown]
# ### Question: why zero an ordinary dimension too?
#
# What does the second intervention (an ordinary dimension of the same token, in the same block) rule out?
# What do the three losses say?

# %% [answer]
answer(f"It rules out that *any* edit of that token's residual hurts: zeroing an ordinary dimension moves the "
       f"loss by {ordinary - clean:+.3f} ({clean:.2f} -> {ordinary:.2f}), zeroing dim {dim} by {zeroed - clean:+.2f} "
       f"(to {zeroed:.2f}). The damage is specific to the massive dimension"
       + ("." if abs(zeroed - clean) > 10 * abs(ordinary - clean) else
          "? Not on this prompt: the two changes are of the same order.")
       + " One prompt and one entry are a hint, not a measurement: Table 3 below repeats it on held-out text.")

# %% [markdown]
# ## 2. Perplexity
#
# Table 3 measures perplexity: `exp` of the mean next-token loss over text cut into chunks of a fixed
# number of tokens (each chunk may start with a BOS token or not: a condition to state).

# %% [markdown]
# ### Exercise 2.2: the perplexity of chunks
#
# `chunks` is a `(n_chunks, n_tokens)` token tensor (here a BOS, then text). Return the perplexity of all
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
# calibration text, without a BOS token (SmolLM2's own tokenizer adds none, so that is what the model saw in
# use):

# %%
texts = load_corpus("wiki-en")
calibration, scored = texts[:8], texts[8:]
chunks = checks.chunk_tokens(model, scored, 64, 4, False)  # (4, 64): text cut as `perplexity` cuts it, no BOS
zero = build_intervention(model, calibration, mode="zero", prepend_bos=False)
print(zero)
clean = chunk_perplexity(model, chunks)
with intervene(model, zero):
    zeroed = chunk_perplexity(model, chunks)
print(f"perplexity {clean:.1f} clean, {zeroed:.4g} with the massive activations zeroed")

# %% [markdown]
# ## 3. Setting them to their mean
#
# If the massive values are constant biases, replacing them with their average over other inputs should
# cost nothing. The paper computes the mean without a BOS token: the first token then differs between
# inputs, so the mean is a real average. With a BOS token the massive activation sits on the same token in
# every input, which (causal attention) sees only itself: its mean is its own value, and "set to the mean"
# changes nothing by construction.

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
print(stats)
stats.summary()

# %%
first = stats.summary()[lambda d: d.kind == "first"].set_index("prepend_bos")
Markdown("\n".join(f"- {'with' if bos else 'without'} BOS: dim {int(r.dim)} at layer {int(r.layer)} has mean "
                    f"{r['mean']:,.1f} and std {r['std']:,.1f} over {int(r.n)} texts"
                    + (f" ({r.note})" if isinstance(r.get("note"), str) and r.note else "")
                    + (" (one distinct token at position 0: a mean of itself)"
                       if dict(zip(stats.dims, stats.constant_by_construction(bos))).get(int(r.dim)) else "")
                    for bos, r in first.iterrows()))

# %% [markdown]
# ## 4. Table 3
#
# `bias_term_table` puts it together: original perplexity, massive activations set to zero, set to their
# mean (both in the block where they appear), and the control (as many random ordinary dimensions zeroed at
# the same positions), under both conditions: without a BOS token (the model's own tokenizer, the paper's
# setting) and with one. Small settings here, so that it runs in seconds; the CLI (`mi-massive table3`) runs
# the full version.

# %%
# Key figure: Table 3 without BOS (the model's own tokenizer), perplexity on a log scale
tables = {bos: bias_term_table(model, ("wiki-en",), seq_len=64, max_chunks=4, n_calibration=8, prepend_bos=bos)
          for bos in (False, True)}
tables[False].show()

# %%
rows = {bos: t.to_dataframe().iloc[0] for bos, t in tables.items()}
for bos, t in tables.items():
    print(t)


def describe(row):
    return (f"perplexity {row.original:.2f} original, {row.zero:.4g} zeroed ({row.zero / row.original:,.0f}x), "
            f"{row['mean']:.2f} with the mean ({row['mean'] / row.original - 1:+.2%}), {row.control:.2f} for the "
            f"control ({row.control / row.original - 1:+.2%})")


Markdown(f"SmolLM2-135M on wiki-en, {tables[False].n_chunks} chunks of {tables[False].seq_len} tokens:\n\n"
         f"- **without BOS**: {describe(rows[False])};\n- **with BOS**: {describe(rows[True])}.")

# %% [markdown]
# ### Question: which row is evidence?
#
# Compare the "mean" column with the original in the two rows. In which condition is "set to the mean
# changes nothing" a finding, and in which is it true by construction? What does the finding then say about
# massive activations?

# %% [answer]
flagged = {bos: t.is_trivial("wiki-en") for bos, t in tables.items()}  # the library: mean = clean by construction
moved = {bos: r['mean'] / r.original - 1 for bos, r in rows.items()}
control = {bos: r.control / r.original - 1 for bos, r in rows.items()}
with_bos = (f"With BOS the library flags the mean row trivial ({tables[True].trivial[0]}): at the massive sites the "
            "mean over calibration texts is the clean value itself, so setting it cannot show anything. "
            + (f"Perplexity is unchanged to every digit ({rows[True].original:.4f} -> {rows[True]['mean']:.4f}). "
               if moved[True] == 0 else
               f"The {moved[True]:+.2%} it still moves (the control moves {control[True]:+.2%}) comes from somewhere "
               "else than replacing a varying value by its average. ")
            + "That row is no evidence. " if flagged[True] else
            f"With BOS the mean row is not flagged trivial and moves perplexity by {moved[True]:+.2%}. ")
without_bos = (f"Without BOS the first token differs between texts, so the mean is a real average, yet perplexity moves "
               f"only {moved[False]:+.2%} while zero multiplies it by {rows[False].zero / rows[False].original:,.0f} and "
               f"the control moves it {control[False]:+.2%}. That row is the evidence: the model needs the massive "
               "activations' *value*, which barely depends on the input, the way it needs a bias."
               if not flagged[False] else "Without BOS the mean row is flagged trivial too: no evidence either way.")
answer(with_bos + without_bos)


# %% [markdown]
# ## Summary
#
# - `loss_with_entry_set` is an intervention on one residual entry; `build_intervention` + `intervene` is
#   the same idea for every massive entry, found per input, with the hooks always removed.
# - Perplexity under zero / mean / control (`bias_term_table`) is the paper's evidence for the bias view
#   when the mean is an average over inputs whose first token differs (no BOS). With a BOS token in front,
#   the library flags the "mean" row as trivial (`BiasTermTable.is_trivial`): read it as no evidence.
#
# Tutorial 3 follows the bias into attention: the massive token becomes an attention sink, and its value
# update is the bias.
