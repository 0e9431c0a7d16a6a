# %% [markdown]
# # Massive activations in Vision Transformers (paper Sec. 5)
#
# Sun et al. (2024) find massive activations in Vision Transformers too: in CLIP ViT-L in a few fixed feature
# dims of a few patch tokens; in DINOv2 with registers in the register tokens, where replacing the registers'
# features by their mean over images ("Fix-Reg-Mean") keeps the model's accuracy, so registers act as learned
# biases, like the first token of a language model.
#
# No CLIP or DINOv2-with-registers checkpoint is reachable offline, so this notebook runs the whole Vision
# Transformer path on **tiny random models** of the three families (ViT, CLIP's vision tower, DINOv2 with
# registers) with massive activations **planted** at CLS, register 0 and patch (1, 2) (`mi_massive.vision.testing`),
# on real photographs shipped with scikit-image. What it shows about those models is true by construction; it
# shows that every analysis finds what was planted. Where the Hub is reachable, the same calls run on the real
# models:
#
# ```bash
# pip install -e ".[vision]"
# huggingface-cli download openai/clip-vit-large-patch14
# huggingface-cli download facebook/dinov2-with-registers-giant
# MI_MASSIVE_VIT=openai/clip-vit-large-patch14 jupyter nbconvert --execute --to notebook notebooks/04_vision.ipynb
# MI_MASSIVE_VIT=facebook/dinov2-with-registers-giant jupyter nbconvert --execute --to notebook notebooks/04_vision.ipynb
# python benchmarks/vision_scan.py --model facebook/dinov2-with-registers-giant --images 32
# ```
#
# (`MI_MASSIVE_VIT` makes the next cell load that model instead of the tiny DINOv2.)

# %%
import os

import torch
from IPython.display import Markdown, display

from mi_massive.vision import load_vision_model, sample_images
from mi_massive.vision.detect import scan, token_stats
from mi_massive.vision.interventions import build_token_intervention, fix_reg_mean, output_change
from mi_massive.vision.origin import attention_sinks, trace_origin
from mi_massive.vision.testing import tiny_vision_model
from mi_massive.vision.viz import attention_grid, magnitudes_3d, patch_grid

torch.set_grad_enabled(False)
name = os.environ.get("MI_MASSIVE_VIT")
model = load_vision_model(name) if name else tiny_vision_model("dinov2_registers")
images = sample_images(8)
print(model.cfg.n_layers, "blocks, d_model", model.cfg.d_model)

# %% [markdown]
# ## Where are they? Detection and the layer profile

# %%
acts, profile = scan(model, images)
print(acts)
print(profile)
sites = acts.sites()
sites.groupby(["token", "dim"]).agg(images=("prompt", "nunique"), first_layer=("first_layer", "min"),
                                    peak=("peak", "median")).reset_index()

# %%
patch_grid(acts)

# %%
magnitudes_3d(model, images[0], layer=model.cfg.n_layers - 1)

# %% [markdown]
# ## Constant across images?

# %%
stats = token_stats(model, images)
stats.summary()

# %% [markdown]
# ## Attention sinks: CLS and registers over the patch grid

# %%
sinks = attention_sinks(model, images)
print(sinks)
attention_grid(model, images[0], layer=model.cfg.n_layers - 1)

# %% [markdown]
# ## Who writes them? trace_origin on one image

# %%
origin = trace_origin(model, images[0])
print(origin)
origin.causal

# %% [markdown]
# ## Fix-Reg-Mean: registers set to their mean over the images, against set to zero

# %%
has_registers = any(t.startswith("reg ") for t in acts.str_tokens[0])
if has_registers:
    fix = fix_reg_mean(model, images)
    df = fix.to_dataframe()
    display(df)
    mean, zero = df.relative_change
    display(Markdown(f"Every register's features at every block set to their mean over these {len(images)} images change "
                     f"the output by **{mean:.3g}** (relative L2), set to zero by **{zero:.3g}**: the mean "
                     f"{'changes it less' if mean < zero else 'does not change it less'}."))

# %% [markdown]
# ## Set-to-zero / set-to-mean of the massive dims, per token kind

# %%
kinds = [k for k, t in (("cls", "CLS"), ("registers", "reg "), ("patches", "patch"))
         if any(tok.startswith(t) for tok in acts.to_dataframe().token)]
rows = []
for kind in kinds:
    ivs = [build_token_intervention(model, images, tokens=kind, mode=m, dims="massive") for m in ("mean", "zero")]
    rows.append(output_change(model, images, ivs).to_dataframe())
import pandas as pd  # noqa: E402

pd.concat(rows, ignore_index=True)
