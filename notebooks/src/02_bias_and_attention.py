# %% [markdown]
# # Massive activations as biases, in perplexity and in attention (paper Table 3, Sec. 4, Eq. 2)
#
# Sun et al. (2024) report:
#
# - **Table 3**: setting the massive activations of LLaMA2-7B to zero sends perplexity from 5.47 to inf
#   (WikiText), setting them to their mean leaves it at 5.47, and zeroing as many random ordinary activations
#   changes nothing;
# - **Sec. 4.1**: after the layer where massive activations appear, attention concentrates on the tokens
#   that hold them (attention sinks);
# - **Eq. 2**: the value updates from those tokens form an implicit bias term: replacing them with their
#   mean keeps the model's performance.
#
# Here the same measurements on SmolLM2-135M and Gemma-3-270M, at small scale so that this notebook runs in
# a few minutes (the CLI `mi-massive table3 --full` runs the paper's size). **Conditions** matter here: "set
# to the mean" is only evidence when the massive activation sits on tokens that differ between inputs. With
# a BOS token in front, it sits on that one token in every input, its mean is its own value, and the row is
# true by construction. SmolLM2's own tokenizer adds no BOS (its default here), Gemma's adds one; both
# conditions are shown for both models, and every number in the prose is computed here.

# %%
import torch
from IPython.display import Markdown, display

from mi_massive import attention_sinks, bias_term_table, implicit_bias, load_corpus, load_model

torch.set_grad_enabled(False)
models = {name: load_model(name) for name in ("smollm2-135m", "gemma3-270m")}
texts = load_corpus("wiki-en")
prompts = [t[:300] for t in texts[100:106]]

# %% [markdown]
# ## Table 3: zero, mean, control, with and without BOS

# %%
tables = {(name, bos): bias_term_table(model, ("wiki-en",), seq_len=64, max_chunks=4, n_calibration=8,
                                       prepend_bos=bos, progress=False)
          for name, model in models.items() for bos in (False, True)}
for table in tables.values():
    print(table)
tables[("smollm2-135m", False)].show()

# %%
def verdict(table, r) -> str:
    """What a Table 3 row can show, from the row and the library's flag."""
    if table.is_trivial("wiki-en"):
        moved = r["mean"] / r.original - 1
        return (f"**trivial** ({table.trivial[0]}): at the massive sites the mean is the clean value, so the row is no "
                "evidence" + (f" (the {moved:+.2%} it moves comes from elsewhere)." if moved else "."))
    if abs(r.zero / r.original - 1) < 0.01:
        return "zeroing changes nothing here, so the row tests nothing."
    return ("not flagged trivial: the mean written can differ from the clean value, so mean ~ original while zero "
            "explodes is evidence for the bias view." if abs(r["mean"] / r.original - 1) < 0.02 and r.zero > 2 * r.original
            else "not flagged trivial, and the mean does not keep perplexity within 2%: no support for the bias view.")


lines = []
for (name, bos), table in tables.items():
    r = table.to_dataframe().iloc[0]
    lines.append(f"- **{name}**, {'with' if bos else 'without'} BOS: {r.original:.2f} original, {r.zero:.4g} zeroed "
                 f"({r.zero / r.original:,.1f}x), {r['mean']:.2f} with the mean ({r['mean'] / r.original - 1:+.2%}), "
                 f"{r.control:.2f} control ({r.control / r.original - 1:+.2%}) — {verdict(table, r)}")
g = {bos: tables[("gemma3-270m", bos)].to_dataframe().iloc[0].original for bos in (False, True)}
lines.append(f"\nGemma without BOS scores {g[False]:.1f} against {g[True]:.2f} with it "
             f"({g[False] / g[True]:.0f}x): its tokenizer always adds BOS, and without it the model is far from its use.")
display(Markdown(f"What we find on wiki-en ({tables[('smollm2-135m', False)].n_chunks} chunks of "
                 f"{tables[('smollm2-135m', False)].seq_len} tokens per row):\n\n" + "\n".join(lines)))

# %% [markdown]
# ## Attention concentration, and a counterexample to the ordering
#
# The share of each query's attention that goes to the massive-activation tokens, per layer (heads
# averaged), and the share of heads whose attention-sink score alpha exceeds 0.3. The paper's ordering:
# massive activation first, sink after. Each model with its own tokenizer's condition.

# %%
sinks = {name: attention_sinks(model, prompts) for name, model in models.items()}
for name, s in sinks.items():
    print(s)
display(sinks["gemma3-270m"].show())

# %%
lines = []
for name, s in sinks.items():
    by_layer, first = s.by_layer(), s.first_massive_layer
    # block `first`'s attention runs before its MLP writes the massive activation: it counts as before
    before, after = by_layer[by_layer.layer <= first], by_layer[by_layer.layer > first]
    early = before[before.sink_mass >= 0.3]
    line = (f"- **{name}** ({'with' if s.prepend_bos else 'without'} BOS): the first massive activation appears in "
            f"the output of block {first}. In later blocks, queries put {after.sink_mass.mean():.0%} of their attention on the sink "
            f"tokens ({after.sink_mass.min():.0%} to {after.sink_mass.max():.0%} by layer) and "
            f"{after.sink_heads.mean():.0%} of the heads are sink heads. ")
    if len(early):
        line += (f"**Counterexample to the ordering**: in block(s) {', '.join(map(str, early.layer))}, before the "
                 f"massive activation exists, the same tokens already take {early.sink_mass.min():.2f}-"
                 f"{early.sink_mass.max():.2f} of the attention. The sink exists before the massive activation does.")
    elif len(before):
        line += (f"Before it, {before.sink_mass.mean():.0%} (at most {before.sink_mass.max():.0%} in one block): "
                 "the sink follows the massive activation, as in the paper.")
    lines.append(line)
display(Markdown("What we find:\n\n" + "\n".join(lines)))

# %% [markdown]
# ## Eq. 2: the implicit attention bias
#
# Each head's output split into the sink tokens' value updates and the rest; the split is checked against
# `hook_z`, and the sink part is swapped for its mean (or removed) in every layer after the massive
# activation appears. On SmolLM2 without BOS the sink is the first token, which differs between prompts,
# so the direction of the sink part *can* vary (with one BOS sink it could not: its cosine to the mean would
# be 1 by construction).

# %%
bias = implicit_bias(models["smollm2-135m"], prompts)
print(bias)
display(bias.show())
bias.swap

# %%
swap = bias.swap.set_index("condition")
size = f"{float(bias.size_cv.mean()):.0%}" if bias.size_cv is not None else "n/a"
display(Markdown(
    f"What we find ({'with' if bias.prepend_bos else 'without'} BOS): the split reproduces `hook_z` to a relative "
    f"error of {bias.max_error:.1e}. Over layers {bias.layers[0]}..{bias.layers[-1]}, the sink part has mean norm "
    f"{float(bias.bias_norm.mean()):.2f} (the rest {float(bias.rest_norm.mean()):.2f}). Its direction: "
    + (f"constant by construction ({bias.by_construction}), no evidence. " if bias.by_construction else
       f"mean cosine {float(bias.constancy.mean()):.3f} to its mean over {bias.n_queries} queries of "
       f"{len(prompts)} prompts with different first tokens. ")
    + f"Its size varies by {size} across queries (the attention on the sink varies). Swapping it for its mean "
    f"changes the loss by {swap.relative['swapped']:+.1%} ({swap.loss['original']:.3f} -> "
    f"{swap.loss['swapped']:.3f}); removing it changes it by {swap.relative['removed']:+.1%}."
))
