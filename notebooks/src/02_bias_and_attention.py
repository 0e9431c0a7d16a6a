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
# Here the same measurements on SmolLM2-135M, at small scale so that this notebook runs in about a minute
# (the CLI `mi-massive table3` runs the full Table 3). Every number in the prose is computed here.

# %%
import torch
from IPython.display import Markdown, display

from mi_massive import attention_sinks, bias_term_table, implicit_bias, load_corpus, load_model

torch.set_grad_enabled(False)
model = load_model("smollm2-135m")
texts = load_corpus("wiki-en")
prompts = [t[:300] for t in texts[100:108]]

# %% [markdown]
# ## Table 3: zero, mean, control

# %%
table = bias_term_table(model, ("wiki-en", "lee-news"), seq_len=64, max_chunks=4, n_calibration=8)
print(table)
table.to_dataframe()

# %%
df = table.to_dataframe()
lines = [f"- **{c}**: {r.original:.1f} original, {r.zero:.3g} zeroed ({r.zero / r.original:.0f}x), "
         f"{r['mean']:.1f} with the mean ({r['mean'] / r.original - 1:+.1%}), {r.control:.1f} control "
         f"({r.control / r.original - 1:+.1%})" for c, r in df.iterrows()]
display(Markdown(f"What we find ({table.n_chunks} chunks of {table.seq_len} tokens per corpus):\n\n" + "\n".join(lines)))

# %% [markdown]
# ## Attention concentration
#
# The share of each query's attention that goes to the massive-activation tokens, per layer (heads
# averaged), and the share of heads whose attention-sink score alpha exceeds 0.3.

# %%
sinks = attention_sinks(model, prompts)
print(sinks)
display(sinks.show())
by_layer = sinks.by_layer()
by_layer.round(2)

# %%
first = sinks.first_massive_layer
before, after = by_layer[by_layer.layer <= first], by_layer[by_layer.layer > first]
display(Markdown(
    f"What we find: the massive activation appears in block {first}. Up to it, queries put "
    f"{before.sink_mass.mean():.0%} of their attention on the massive token (head average); after it, "
    f"{after.sink_mass.mean():.0%} (from {after.sink_mass.min():.0%} to {after.sink_mass.max():.0%} by layer), and "
    f"{after.sink_heads.mean():.0%} of the heads are sink heads."
))

# %% [markdown]
# ## Eq. 2: the implicit attention bias
#
# Each head's output split into the sink tokens' value updates and the rest; the split is checked against
# `hook_z`, and the sink part is swapped for its mean (or removed) in every layer after the massive
# activation appears.

# %%
bias = implicit_bias(model, prompts)
print(bias)
display(bias.show())
bias.swap

# %%
swap = bias.swap.set_index("condition")
display(Markdown(
    f"What we find: the split reproduces `hook_z` to a relative error of {bias.max_error:.1e}. Over layers "
    f"{bias.layers[0]}..{bias.layers[-1]}, the sink part has mean norm {float(bias.bias_norm.mean()):.2f} "
    f"(the rest {float(bias.rest_norm.mean()):.2f}) and varies by {float(bias.spread.mean()):.1%} of its mean "
    f"across {bias.n_queries} queries. Swapping it for its mean changes the loss by "
    f"{swap.relative['swapped']:+.1%} ({swap.loss['original']:.3f} -> {swap.loss['swapped']:.3f}); removing it "
    f"changes it by {swap.relative['removed']:+.1%}."
))
