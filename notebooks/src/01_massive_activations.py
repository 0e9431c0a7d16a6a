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
# Here the same measurements on the two embedded models, SmolLM2-135M and Gemma-3-270M. Every number in the
# prose below the code is computed in this notebook.

# %%
import torch
from IPython.display import Markdown, display

from mi_massive import find_massive_activations, layer_profile, load_corpus, load_model, massive_stats, viz

torch.set_grad_enabled(False)
PROMPT = "Summer is warm. Winter is cold."
texts = [t[:300] for t in load_corpus("wiki-en", n=8)]
models = {name: load_model(name) for name in ("smollm2-135m", "gemma3-270m")}

# %% [markdown]
# ## Figure 1: the 3-D view
#
# `|x|` of one middle block's output over tokens and dimensions.

# %%
found = {name: find_massive_activations(model, [PROMPT] + texts) for name, model in models.items()}
views = {}
for name, model in models.items():
    layer = (found[name].first_layer + model.cfg.n_layers) // 2
    views[name] = layer
    display(viz.magnitudes_3d(model, PROMPT, layer))

# %%
lines = []
for name, f in found.items():
    s = f.summary()
    top = s.iloc[0]
    lines.append(f"- **{name}**: {len(s)} massive dimension(s) over {len(f.str_tokens)} inputs; the largest, dim "
                 f"{int(top.dim)}, reaches |x| = {top.max_abs:,.0f} at tokens {top.tokens[:4]} (positions "
                 f"{top.positions[:4]}), layers {int(top.first_layer)}..{int(top.last_layer)}.")
display(Markdown("What we find:\n\n" + "\n".join(lines)))

# %% [markdown]
# ## Figure 2: the layer profile
#
# The top-3 magnitudes and the median of each block's output, averaged over the same inputs.

# %%
profiles = {name: layer_profile(model, [PROMPT] + texts) for name, model in models.items()}
for p in profiles.values():
    display(p.show())

# %%
lines = []
for name, p in profiles.items():
    j = p.jump_layer
    lines.append(f"- **{name}**: the top-1 magnitude grows {float(p.top[j, 0] / p.top[j - 1, 0]):.0f}x in layer {j} "
                 f"(to {float(p.top[j, 0]):,.0f}) and peaks at {float(p.top[:, 0].max()):,.0f} in layer "
                 f"{int(p.top[:, 0].argmax())}; the median stays between {float(p.median.min()):.2f} and "
                 f"{float(p.median.max()):.2f}; in the last layer the top-1 is {float(p.top[-1, 0]):,.0f}.")
display(Markdown("What we find:\n\n" + "\n".join(lines)))

# %% [markdown]
# ## Constancy across inputs
#
# The paper measures the mean and standard deviation of each massive value over many inputs without a BOS
# token (with a BOS, position 0 is the same token in every input and sees only itself, so its value is
# trivially constant). `massive_stats` reports both settings.

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
        r = sm[(sm.kind == "first") & (sm.prepend_bos == bos)].iloc[0]
        lines.append(f"- **{name}**, {'with' if bos else 'without'} BOS: dim {int(r.dim)} at the starting token, "
                     f"layer {int(r.layer)}: mean {r['mean']:,.0f}, std {r['std']:,.1f} (CV {r.cv:.1%}) over "
                     f"{int(r.n)} texts.")
display(Markdown("What we find:\n\n" + "\n".join(lines)))
