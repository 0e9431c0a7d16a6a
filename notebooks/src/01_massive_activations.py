# %% [markdown]
# # Massive activations in the embedded models (paper Sec. 2-3: Figures 1-2, constancy)
#
# Sun et al. (2024) report, for LLaMA2-7B and many other LLMs:
#
# - **Figure 1**: a few residual entries (e.g. dims 1415 and 2533 of LLaMA2-7B) are about 10,000x larger
#   than the rest, at the starting token and the first delimiter;
# - **Figure 2**: they appear abruptly in one early layer (layer 2 of LLaMA2-7B), stay nearly constant through
#   the middle layers and fade in the last ones, while the median stays small;
# - **Sec. 3**: their values are largely constant across inputs.
#
# Here the same measurements on the two embedded models, SmolLM2-135M and Gemma-3-270M. **Conditions**: each
# model sees its prompts as its own tokenizer makes them (`prepend_bos=None`: SmolLM2's adds no BOS token,
# Gemma's adds one), unless a cell says otherwise; every result's sentence states its condition. Two kinds of
# massive dimension are kept apart: a *token's* massive activation (a few positions) and a *feature-wide
# outlier* (massive at most positions of a layer, such as Gemma's dim 400 in its first blocks), which is
# reported but is not where massive activations "appear". Every number in the prose below is computed here.

# %%
import torch
from IPython.display import Markdown, display

from mi_massive import (find_massive_activations, layer_magnitudes, layer_profile, load_corpus, load_model,
                        massive_stats)

torch.set_grad_enabled(False)
PROMPT = "Summer is warm. Winter is cold."
texts = [t[:300] for t in load_corpus("wiki-en", n=8)]
models = {name: load_model(name) for name in ("smollm2-135m", "gemma3-270m")}

# %% [markdown]
# ## Figure 1: the 3-D view
#
# `|x|` of one middle block's output over tokens and dimensions.

# %%
found = {name: find_massive_activations(model, [PROMPT] + texts, progress=False) for name, model in models.items()}
for name, model in models.items():
    layer = ((found[name].first_layer or 0) + model.cfg.n_layers) // 2
    display(Markdown(f"**{name}**, block {layer}'s output"))
    display(layer_magnitudes(model, PROMPT, layer).show())

# %%
lines = []
for name, f in found.items():
    s = f.summary()
    tok = s[s.kind == "token"] if "kind" in s else s
    wide = s[s.kind == "feature-wide"] if "kind" in s else s.iloc[:0]
    top = tok.iloc[0]
    sites = ", ".join(map(str, getattr(top, "sites", top.tokens)))
    line = (f"- **{name}** ({f}):\n  the largest token dimension, dim {int(top.dim)}, reaches |x| = {top.max_abs:,.0f} "
            f"at {sites}, layers {int(top.first_layer)}..{int(top.last_layer)}; massive activations first appear in "
            f"block {f.first_layer}.")
    if len(wide):
        line += (f" Feature-wide outlier(s), reported apart: " + "; ".join(
            f"dim {int(r.dim)} (layers {int(r.first_layer)}..{int(r.last_layer)}, {r.positions}, |x| up to "
            f"{r.max_abs:,.0f})" for r in wide.itertuples()) + ".")
    lines.append(line)
display(Markdown(f"What we find over {len(texts) + 1} inputs:\n\n" + "\n".join(lines)))

# %% [markdown]
# ## Figure 2: the layer profile
#
# The top-3 magnitudes and the median of each block's output, averaged over the same inputs.

# %%
profiles = {name: layer_profile(model, [PROMPT] + texts, progress=False) for name, model in models.items()}
for p in profiles.values():
    display(p.show())

# %%
lines = []
for name, p in profiles.items():
    j, med, top1 = p.jump_layer, p.median, p.top[:, 0]
    lines.append(f"- **{name}**: the top-1 magnitude grows {float(top1[j] / top1[j - 1]):.0f}x in layer {j} "
                 f"(to {float(top1[j]):,.0f}) and peaks at {float(top1.max()):,.0f} in layer {int(top1.argmax())}; "
                 f"in the last layer it is {float(top1[-1]):,.0f}. The median ranges from {float(med.min()):.2f} "
                 f"(layer {int(med.argmin())}) to {float(med.max()):.2f} (layer {int(med.argmax())}), a factor of "
                 f"{float(med.max() / med.min()):.0f}"
                 + (": it does not stay flat, so the top-1 / median ratio shrinks from "
                    f"{float(top1[j] / med[j]):,.0f} at the jump to {float(top1[-1] / med[-1]):,.0f} in the last layer."
                    if med.max() / med.min() > 2 else ": it stays nearly flat."))
display(Markdown("What we find:\n\n" + "\n".join(lines)))

# %% [markdown]
# ## Constancy across inputs
#
# The paper measures the mean and standard deviation of each massive value over many inputs without a BOS
# token. With a BOS token, position 0 is the same token in every input and (causal attention) sees only
# itself, so its value is identical in every input by construction: that setting is shown to make the point,
# not as evidence. `massive_stats` reports both.

# %%
stats = {name: massive_stats(model, texts, progress=False) for name, model in models.items()}
for name, s in stats.items():
    print(s)
    display(s.summary())

# %%
lines = []
for name, s in stats.items():
    sm = s.summary()
    for bos in s.prepend_bos:
        first = sm[(sm.kind == "first") & (sm.prepend_bos == bos) & (sm.n > 0)]
        if not len(first):
            lines.append(f"- **{name}**, {'with' if bos else 'without'} BOS: no massive value at the starting token.")
            continue
        r = first.iloc[0]
        fixed = dict(zip(s.dims, s.constant_by_construction(bos))).get(int(r.dim), False)  # the library's flag
        lines.append(f"- **{name}**, {'with' if bos else 'without'} BOS: dim {int(r.dim)} at the starting token, "
                     f"layer {int(r.layer)}: mean {r['mean']:,.0f}, std {r['std']:,.1f} (CV {r.cv:.1%}) over "
                     f"{int(r.n)} texts"
                     + (" (one distinct token there: constant by construction, no evidence)." if fixed else
                        " (different first tokens: real evidence)."))
display(Markdown("What we find:\n\n" + "\n".join(lines)))
