# %% [markdown]
# # Training lab: do massive activations emerge, and does an explicit attention bias remove them? (paper Sec. 4.3)
#
# Sun et al. (2024) train GPT-2 from scratch three ways: as is, with a learnable sink token in front of every
# sequence, and with an explicit attention bias, one learned key $k'$ and value $v'$ per head that every query
# also attends to:
#
# $$\mathrm{Attention}(Q, K, V; k', v') = \mathrm{softmax}\!\left(\frac{Q\,[K^\top\; k']}{\sqrt{d_\text{head}}}\right)\begin{bmatrix} V \\ v'^\top \end{bmatrix}$$
#
# The default model develops massive activations at the first token, the sink-token model on the sink token,
# and the attention-bias model none at all, at the same validation loss. `mi_massive.train` runs this
# comparison, with three more variants of later work: `softmax1` (an extra 1 in the softmax denominator),
# `sigmoid` (unnormalised sigmoid attention) and `gated` (a sigmoid gate on each head's output, Qiu et al. 2025).
# Every arm has the same seed, data order, schedule and step count, and is scanned every 400 steps with the
# package's own rule on held-out text.
#
# This notebook draws the records of one run on an H200 (`benchmarks/train_h200.py`), saved in
# `benchmarks/raw/`; it trains nothing. To train yourself:
#
# ```python
# from mi_massive.train import train, LabSpec
# run = train(("default", "sink_token", "attn_bias"), LabSpec(steps=4000, eval_every=400), out_dir="lab")
# ```
#
# or `mi-massive train --steps 4000 --out lab`. Every arm's checkpoint opens with `load_model("lab/attn_bias")`.
# The offline text is small (2.6M tokens at most); to train on text of your own, such as OpenWebText or C4 shards
# saved as JSON lines, pass `LabSpec(data="file:owt.jsonl")` or `--data file:owt.jsonl` (a .txt file with blank
# lines between documents, a .gz of either, or a folder of them also work). The tokens are cached, so the second
# run does not tokenize again.

# %%
import json
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

from mi_massive.train import TrainingRun

here = Path.cwd().resolve()
root = next(p for p in (here, *here.parents) if (p / "benchmarks" / "raw").is_dir())
run = TrainingRun.from_json(root / "benchmarks" / "raw" / "2026-12-03_h200_train_lab.json")
speed = pd.read_json(root / "benchmarks" / "raw" / "2026-12-03_h200_train_speed.jsonl", lines=True)
spec, data = run.spec, run.data
display(Markdown(
    f"**Model** (every arm): {spec['n_layers']} Llama blocks, d_model {spec['d_model']}, {spec['n_heads']} heads, "
    f"{int(run.arm_info.n_params.iloc[0]) / 1e6:.1f}M parameters; windows of {spec['n_ctx']} tokens, "
    f"{spec['batch_size']} per step, {spec['steps']} steps, peak lr {spec['lr']:g}.  \n"
    f"**Data**: {data['description']}; {data['train_tokens']:,} training tokens, {data['val_tokens']:,} held out, "
    f"so {float(run.arm_info.epochs.iloc[0]):.0f} epochs. Licences: {data['licence']}."))
run

# %% [markdown]
# ## Emergence curves
#
# Per arm, over training tokens: the top-1 |x| / median of the block outputs at position 0 and elsewhere (the
# largest over layers; the dotted line is the rule's ratio of 1000), the share of layers where the rule hits at
# one fixed position in at least half of the held-out windows, the attention on the first token, the attention
# on $k'$ (or on softmax1's extra 1), and the validation loss.

# %%
run.show()

# %% [markdown]
# ## The paper's criteria, computed from the records

# %%
def paper_criteria(r: TrainingRun, step: int | None = None) -> pd.DataFrame:
    """The issue's four checks from a run's records at `step` (default: each arm's last scan), shown as a list;
    returns the arms' rows at that step."""
    at = r.final(step).set_index("arm")
    scans = r.to_dataframe()
    best = scans.loc[scans.groupby("arm", sort=False).val_loss.idxmin()].set_index("arm")
    d, a, n = at.loc["default"], at.loc["attn_bias"], r.spec["n_layers"]
    display(Markdown("\n".join([
        f"- default: rule hits at one fixed position in {d.fixed_pos_layers * n:.0f} of {n} layers "
        f"(needed at least a third), largest top-1/median {d.max_ratio:.1f} (needed {r.ratio:g}): "
        f"{'met' if d.fixed_pos_layers >= 1 / 3 and d.max_ratio >= r.ratio else 'not met'}.",
        f"- attn_bias: {int(a.n_hits)} rule hits, top-1/median {a.max_ratio:.1f}, {d.max_ratio / a.max_ratio:.1f}x "
        f"below the default's (needed no hit and 10x): "
        f"{'met' if a.n_hits == 0 and d.max_ratio / a.max_ratio >= 10 else 'not met'}.",
        f"- sink_token: {int(at.loc['sink_token'].n_hits)} rule hits, largest top-1/median at the sink "
        f"{at.loc['sink_token'].max_ratio_pos0:.1f} against {at.loc['sink_token'].max_ratio_other:.1f} elsewhere.",
        f"- validation loss, default vs attn_bias: {abs(d.val_loss - a.val_loss):.4f} nats apart at step "
        f"{int(d.step)}, {abs(best.loc['default'].val_loss - best.loc['attn_bias'].val_loss):.4f} at each arm's best "
        f"scan (steps {int(best.loc['default'].step)} and {int(best.loc['attn_bias'].step)}; needed 0.05)."])))
    return at[["step", "val_loss", "max_ratio_pos0", "max_ratio_other", "n_hits", "first_token_mass", "bias_mass"]]


final = run.final().set_index("arm")
paper_criteria(run).round(4)

# %% [markdown]
# ## Layer by layer, at the end of training
#
# Where position 0 stands against the rest of the sequence in each block output, for every arm.

# %%
import plotly.graph_objects as go
from mi_massive.train.result import COLORS

fig = go.Figure()
for arm in run.arms:
    g = run.by_layer(arm)
    fig.add_trace(go.Scatter(x=g.layer, y=g.ratio_pos0, name=f"{arm}, position 0", line={"color": COLORS[arm]}))
    fig.add_trace(go.Scatter(x=g.layer, y=g.ratio_other, name=f"{arm}, elsewhere",
                             line={"color": COLORS[arm], "dash": "dot"}))
fig.add_hline(y=run.ratio, line={"dash": "dot", "color": "#888"})
fig.update_layout(yaxis={"type": "log", "title": "top-1 |x| / median"}, xaxis_title="layer", height=420,
                  template="plotly_white", title=f"Final scan (step {spec['steps']})")
fig

# %%
g = run.curves[run.curves.arm == "default"]
peak = g.loc[g.top_pos0.idxmax()]
display(Markdown(
    f"In the default arm the largest |x| at position 0 was {peak.top_pos0:.0f} (layer {int(peak.layer)}, step "
    f"{int(peak.step)}), above the rule's {run.threshold:g}, but the median |x| of that block output was "
    f"{peak['median']:.1f}, so the ratio was {peak.ratio_pos0:.0f}: the whole residual stream grew as the model "
    f"memorised its {data['train_tokens']:,} tokens (training loss {final.loc['default'].train_loss:.2f}, "
    f"validation loss {final.loc['default'].val_loss:.2f} at the end)."))

# %% [markdown]
# ## Throughput on the H200
#
# Model FLOPs per token: 6 x the parameters in matrix products (the unembedding included) + 12 x layers x d_model
# x n_ctx; MFU against the H200's dense bf16 peak of 989.4 TFLOP/s (datasheet). One arm alone on the GPU, each
# setting (`benchmarks/train_speed.py`), and the six arms of the run sharing it:

# %%
alone = speed[["setting", "tokens_per_s", "mfu"]].copy()
shared = pd.DataFrame([{"setting": f"{len(run.arms)} arms at once (sum)", "tokens_per_s": run.arm_info.tokens_per_s.sum(),
                        "mfu": (run.arm_info.tokens_per_s * run.arm_info.flops_per_token).sum() / 989.4e12}])
pd.concat([alone, shared], ignore_index=True).round({"tokens_per_s": 0, "mfu": 3})

# %% [markdown]
# ## A second data set: Bigram-Backcopy, with fresh tokens at every step
#
# The text above is 573k tokens, so the arms memorise it long before anything else can happen. The synthetic
# Bigram-Backcopy task of Guo et al. (2024) has no such limit: a sparse random bigram chain over 512 tokens,
# except that after one of 16 trigger tokens the next token copies the one before the trigger. A head that does
# the copy is needed at the triggers and must do nothing everywhere else, the situation in which
# attention sinks are expected. `mi-massive train --data backcopy`; every arm ran for the same wall-clock budget
# on the shared H200 (`--max-minutes 5.5`: an arm stops at its first scan after it), so the arms are compared at
# the last scan they all reached.

# %%
bc = TrainingRun.from_json(root / "benchmarks" / "raw" / "2026-12-03_s8_h200_train_backcopy" / "run.json")
common = bc.common_step()
at = bc.final(common).set_index("arm")
bspec, binfo = bc.spec, bc.arm_info.set_index("arm")
from mi_massive.train.data import backcopy_tokens

sample = backcopy_tokens(n_train=1 << 16, n_val=1, seed=bspec["seed"]).train - 3  # ids 0..15 are the triggers
display(Markdown(
    f"Triggers are {float((sample < 16).float().mean()):.1%} of the training tokens (a sample of {len(sample):,})."))
display(Markdown(
    f"**Model**: {bspec['n_layers']} Llama blocks, d_model {bspec['d_model']}, {bspec['n_heads']} heads, "
    f"{int(binfo.n_params.iloc[0]) / 1e6:.2f}M parameters, vocabulary {bspec['vocab_size']}; windows of "
    f"{bspec['n_ctx']} tokens, {bspec['batch_size']} per step, peak lr {bspec['lr']:g}. Steps reached: "
    + ", ".join(f"{a} {int(s)}" for a, s in bc.curves.groupby('arm', sort=False).step.max().items())
    + f"; compared at step {common} ({common * bspec['batch_size'] * bspec['n_ctx'] / 1e6:.0f}M tokens)."))
at[["val_loss", "max_ratio_pos0", "max_ratio_other", "n_hits", "first_token_mass", "bias_mass"]].round(4)

# %%
bc.show()

# %%
d, a = at.loc["default"], at.loc["attn_bias"]
display(Markdown(
    f"- default: {int(d.n_hits)} rule hits, top-1/median {d.max_ratio_pos0:.1f} at position 0 and "
    f"{d.max_ratio_other:.1f} elsewhere; {d.first_token_mass:.1%} of the attention on the first token.\n"
    f"- attn_bias: {int(a.n_hits)} rule hits; its heads put {a.bias_mass:.0%} of their attention on $k'$ "
    f"(the sink the task wants exists once it is offered), {a.first_token_mass:.1%} on the first token.\n"
    f"- sink_token: top-1/median {at.loc['sink_token'].max_ratio_pos0:.1f} on the sink against "
    f"{at.loc['sink_token'].max_ratio_other:.1f} elsewhere.\n"
    f"- validation loss, default vs attn_bias: {abs(d.val_loss - a.val_loss):.4f} nats apart."))

# %% [markdown]
# ## A third data set: the copy task, where a copying head has nothing to copy half the time
#
# Spans of 32 random tokens, each followed by itself (`mi-massive train --data copy`). In the first half of every
# span the next token is unpredictable, and a head that copies would only add a wrong token: the situation in
# which heads need somewhere harmless to look. Five arms shared the H200 for 12 minutes (`--max-minutes 12`), and a
# sixth process trained the default arm with GPT-2 blocks (learned positions, as the paper's GPT-2).

# %%
import math

raw = root / "benchmarks" / "raw" / "2026-12-03_s9_h200_train_copy"
cp = TrainingRun.from_json(raw / "run.json")
gp = TrainingRun.from_json(raw / "gpt2_run_default.json")
cstep = cp.common_step()
cat = cp.final(cstep).set_index("arm")
cspec = cp.spec
display(Markdown(
    f"**Model**: {cspec['n_layers']} Llama blocks, d_model {cspec['d_model']}, {cspec['n_heads']} heads, "
    f"{int(cp.arm_info.n_params.iloc[0]) / 1e6:.2f}M parameters; {cspec['batch_size']} windows of {cspec['n_ctx']} "
    f"tokens per step, peak lr {cspec['lr']:g}; compared at step {cstep} "
    f"({cstep * cspec['batch_size'] * cspec['n_ctx'] / 1e6:.0f}M tokens). The best possible loss is "
    f"{math.log(512) / 2:.2f} nats (half the tokens are uniform over 512)."))
cat[["val_loss", "max_ratio_pos0", "max_ratio_other", "n_hits", "layers_with_hits", "first_token_mass",
     "bias_mass"]].round(4)

# %%
cp.show()

# %% [markdown]
# Where the rule's hits are: one row per arm and block at the last common scan. Every hit sits in the last block.

# %%
last = cp.curves[cp.curves.step == cstep]
by_block = last.pivot_table(index="arm", columns="layer", values="n_hits", aggfunc="sum", sort=False)
by_block

# %%
d, a, s = cat.loc["default"], cat.loc["attn_bias"], cat.loc["sink_token"]
blocks_hit = sorted(set(last[last.n_hits > 0].layer.astype(int)))
mid = last[last.layer < cspec["n_layers"] - 1]
g0 = gp.final().iloc[0]
display(Markdown(
    f"- Blocks with rule hits, any arm: {blocks_hit} of {cspec['n_layers']}; the default arm's hits number "
    f"{int(d.n_hits)} over {cspec['eval_windows']} windows of {cspec['n_ctx']} positions, spread over "
    f"the positions rather than at a fixed one.\n"
    f"- Blocks before the last: top-1/median at most {mid.ratio_pos0.max():.0f} at position 0 and "
    f"{mid.ratio_other.max():.0f} elsewhere, medians {mid['median'].min():.1f}-{mid['median'].max():.1f}.\n"
    f"- Attention on the first token: default {d.first_token_mass:.1%}, sink_token {s.first_token_mass:.1%} "
    f"(block 1: {last[(last.arm == 'sink_token') & (last.layer == 1)].first_token_mass.iloc[0]:.1%}); attn_bias "
    f"puts {a.bias_mass:.0%} on $k'$.\n"
    f"- Validation loss, default vs attn_bias: {abs(d.val_loss - a.val_loss):.4f} nats apart.\n"
    f"- GPT-2 blocks: loss {g0.val_loss:.2f} after {int(g0.step)} steps (did not learn the copy), "
    f"{int(g0.n_hits)} hits, {g0.first_token_mass:.1%} on the first token."))

# %% [markdown]
# The last block's values are not the paper's massive activations. `trace_origin`, run on the default checkpoint
# after the run (`benchmarks/train_h200.py`, its record in checks.json), names what writes them, and
# `benchmarks/lab_last_block.py` (a CPU run of the same task, its record beside it) what they do: they are large where
# the next token is unpredictable, and after the final norm one huge dimension leaves the residual pointing along
# that axis, which flattens the logits.

# %%
checks = json.loads((raw / "checks.json").read_text())
lb = json.loads((root / "benchmarks" / "raw" / "2026-12-03_s9_local_2cpu_lab_last_block.json").read_text())
display(Markdown(
    f"- trace_origin on the default checkpoint: `{checks['analyses']['default']['trace_origin']}`\n"
    f"- CPU run ({lb['steps']} steps): the largest final-block dimension ({lb['dim']}) averages |x| = "
    f"{lb['abs_x_dim_unpredictable']:.0f} where the next token is unpredictable and {lb['abs_x_dim_copyable']:.1f} "
    f"where it is a copy (median |x| {lb['median_abs_x']:.2f}); the prediction's entropy there is "
    f"{lb['entropy_unpredictable']:.2f} nats (uniform: {lb['entropy_uniform']:.2f}) against "
    f"{lb['entropy_copyable']:.2f}; |x| of that dimension and the entropy correlate at "
    f"{lb['corr_abs_x_dim_entropy']:.2f} across positions."))

# %% [markdown]
# ## Where does the phenomenon first appear? Ten conditions on one H200 (session 11)
#
# None of the runs above met the paper's rule at a fixed position, so `benchmarks/train_sweep.py` trained one
# arm per condition, several processes to a GPU, each until its wall-clock budget ran out: GPT-2 and Llama blocks,
# English text (the three offline corpora, windows starting anywhere, so the first token is arbitrary as in the
# paper's GPT-2 runs) and Bigram-Backcopy, d_model 256 and 512, peak learning rates 6e-4 to 1e-2, and the sink
# token. The figure is every scan of every condition: the largest top-1 |x| / median at position 0 over the
# blocks, against training tokens; the dotted line is the rule's 1000. The rule is the package's, unchanged.

# %%
def sweep_jobs(sweep: Path, names: list[str] | None = None) -> list[tuple[dict, pd.DataFrame, pd.DataFrame]]:
    """One (summary row, scans, last scan by block) per job of a `train_sweep.py` folder (or the named jobs)."""
    summary = json.loads((sweep / "summary.json").read_text())
    jobs = []
    for name, job in summary.items():
        if name.startswith("_") or (names is not None and name not in names):
            continue
        scans = pd.DataFrame(job["scans"])
        job_run = TrainingRun.from_json(next((sweep / name).glob("run_*.json")))
        curves = job_run.curves
        last = curves[curves.step == curves.step.max()]
        args = dict(zip(job["argv"][::2], job["argv"][1::2]))
        row = {"condition": name, "arm": job["arm"], "arch": args.get("--arch", "llama"),
               "data": args["--data"].replace("wiki-en+lee-news+linux-doc", "text"),
               "d_model": int(job_run.spec["d_model"]), "blocks": int(job_run.spec["n_layers"]),
               "lr": float(job_run.spec["lr"]), "weight decay": float(job_run.spec["weight_decay"]),
               "n_ctx": int(job_run.spec["n_ctx"]), "params (M)": job["arm_info"]["n_params"] / 1e6,
               "steps": int(scans.step.iloc[-1]), "tokens (M)": scans.tokens.iloc[-1] / 1e6,
               "epochs": job["arm_info"]["epochs"], "largest ratio at pos 0": scans.max_ratio_pos0.max(),
               "largest ratio elsewhere": scans.max_ratio_other.max(),
               "final ratio at pos 0": scans.max_ratio_pos0.iloc[-1], "rule hits (all scans)": scans.n_hits.sum(),
               "final median |x|": last["median"].median(), "final max |x|": last[["top_pos0", "top_other"]].max().max(),
               "best val loss": scans.val_loss.min(), "final val loss": scans.val_loss.iloc[-1],
               "first-token attention (final)": scans.first_token_mass.iloc[-1],
               "first-token attention, most in one block (final)": last.first_token_mass.max(),
               "that block": int(last.layer.iloc[last.first_token_mass.argmax()]),
               "tokens/s": job["arm_info"]["tokens_per_s"], "FLOPs/token": job["arm_info"]["flops_per_token"]}
        jobs.append((row, scans, last))
    return jobs


sweeps = [root / "benchmarks" / "raw" / f"2026-12-04_s11_h200_train_sweep{i}" for i in ("", "2")]
rows, fig = [], go.Figure()
for sweep in sweeps:
    for row, scans, _ in sweep_jobs(sweep):
        rows.append(row)
        fig.add_trace(go.Scatter(x=scans.tokens / 1e6, y=scans.max_ratio_pos0, mode="lines+markers",
                                 name=row["condition"]))
fig.add_hline(y=1000, line_dash="dot", annotation_text="rule: 1000")
fig.update_layout(xaxis_title="training tokens (millions)",
                  yaxis_title="top-1 |x| / median at position 0 (max over blocks)",
                  yaxis_type="log", template="plotly_white", height=480,
                  title="No condition reaches the rule's ratio within its budget")
sweep_table = pd.DataFrame(rows).sort_values("largest ratio at pos 0", ascending=False).reset_index(drop=True)
fig.show()
sweep_table.round(4)

# %%
top = sweep_table.iloc[0]
sink_row = sweep_table.loc[sweep_table["first-token attention, most in one block (final)"].idxmax()]
hot = sweep_table[sweep_table["final median |x|"] > 50]
text = sweep_table[sweep_table.data == "text"]
display(Markdown(
    f"- Rule hits over all {len(sweep_table)} conditions and all their scans: "
    f"{int(sweep_table['rule hits (all scans)'].sum())}. The largest top-1/median at position 0 was "
    f"{top['largest ratio at pos 0']:.0f} ({top.condition}); the largest anywhere "
    f"{sweep_table[['largest ratio at pos 0', 'largest ratio elsewhere']].max().max():.0f}, "
    f"{1000 / sweep_table[['largest ratio at pos 0', 'largest ratio elsewhere']].max().max():.1f}x short of the rule.\n"
    f"- Scale reached: up to {sweep_table['params (M)'].max():.0f}M parameters and "
    f"{sweep_table['tokens (M)'].max():.0f}M tokens per condition (the paper's GPT-2 runs: 124M parameters, billions "
    f"of tokens).\n"
    f"- Where |x| passes 100 the whole stream grew with it: {', '.join(hot.condition)} end with a median |x| of "
    f"{hot['final median |x|'].min():.0f}-{hot['final median |x|'].max():.0f} per block, so top values of "
    f"{hot['final max |x|'].min():,.0f}-{hot['final max |x|'].max():,.0f} stay below 1000x the median. The rule's "
    f"ratio, not its absolute threshold, is what these runs fail.\n"
    f"- Text conditions overfit the small offline corpora ({text.epochs.min():.0f}-{text.epochs.max():.0f} epochs): "
    f"the best validation loss is {text['best val loss'].min():.2f}, the final ones "
    f"{text['final val loss'].min():.2f}-{text['final val loss'].max():.2f}. Their largest ratio at position 0 "
    f"({text['largest ratio at pos 0'].min():.0f}-{text['largest ratio at pos 0'].max():.0f}) came while they "
    f"memorised, so it is no sign of the paper's phenomenon in a model that generalises.\n"
    f"- Attention on the first token, averaged over blocks, stays near uniform (final "
    f"{sweep_table['first-token attention (final)'].min():.1%}-"
    f"{sweep_table['first-token attention (final)'].max():.1%}; "
    f"uniform over 256 keys: 2.0%). One block goes further: {sink_row.condition}, block {sink_row['that block']}, "
    f"{sink_row['first-token attention, most in one block (final)']:.1%}. Nowhere is it the attention sink that, in "
    f"the paper and in Gu et al. (2024, 60M parameters, about 5B tokens), comes with the massive activation."))

# %% [markdown]
# ## The paper's three arms on GPT-2 blocks (session 12)
#
# The condition that came closest for a default arm above (GPT-2 blocks, d_model 512, peak lr 2e-3, the offline
# text) with the paper's three arms, one process each on the H200, 2.8 minutes each
# (`benchmarks/train_h200.py --arms default sink_token attn_bias -- --arch gpt2 ...`).

# %%
p12 = TrainingRun.from_json(root / "benchmarks" / "raw" / "2026-12-04_s12_h200_gpt2_paper_arms" / "gpt2" / "run.json")
info12 = p12.arm_info.set_index("arm")
display(Markdown(
    f"**Model**: {p12.spec['n_layers']} GPT-2 blocks, d_model {p12.spec['d_model']}, {p12.spec['n_heads']} heads, "
    f"{info12.n_params.iloc[0] / 1e6:.1f}M parameters; {p12.spec['batch_size']} windows of {p12.spec['n_ctx']} "
    f"tokens per step, {p12.common_step()} steps ({info12.epochs.iloc[0]:.1f} epochs of the text); "
    f"{info12.tokens_per_s.min() / 1e3:.0f}-{info12.tokens_per_s.max() / 1e3:.0f}k tokens/s per arm, "
    f"MFU {info12.mfu.mean():.1%} each."))
paper_criteria(p12).round(4)

# %%
p12.show()

# %% [markdown]
# ## What moves the default arm's ratio? Ten more conditions (session 13)
#
# From the closest condition (GPT-2 blocks, d_model 512, 8 blocks, peak lr 2e-3, weight decay 0.1, 256 tokens
# per window; session 11's `gpt2_text_d512_lr2e-3`, the baseline below), one change at a time: weight decay 1.0
# (it shrinks ordinary activations, the ratio's denominator) and 0, 12, 16 and 24 blocks, lr 4e-3, d_model 768,
# the paper's context of 1024 tokens (8 windows per step, the same tokens per step); then 24 blocks without
# weight decay, for the default arm and the sink token. Three rounds of processes sharing the H200, each until its
# budget ran out (`benchmarks/train_sweep.py`, scanned every 750 steps).

# %%
base_name = "gpt2_text_d512_lr2e-3"
s13 = root / "benchmarks" / "raw" / "2026-12-04_s13_h200_train_sweep3"
jobs13 = (sweep_jobs(root / "benchmarks" / "raw" / "2026-12-04_s11_h200_train_sweep2", [base_name])
          + sweep_jobs(s13))
fig = go.Figure()
for row, scans, _ in jobs13:
    label = row["condition"].replace(base_name, "baseline").replace("baseline_", "")
    fig.add_trace(go.Scatter(x=scans.step, y=scans.max_ratio_pos0, mode="lines+markers", name=label,
                             line={"width": 4 if label == "baseline" else 2}))
fig.add_hline(y=1000, line_dash="dot", annotation_text="rule: 1000")
fig.update_layout(xaxis_title="step (32 x 256 tokens each)", yaxis_title="top-1 |x| / median at position 0 "
                  "(max over blocks)", yaxis_type="log", template="plotly_white", height=480,
                  title="One change at a time from the closest condition")
fig.show()
table13 = pd.DataFrame([row for row, _, _ in jobs13])
table13.insert(1, "ratio at pos 0, step 3000", [scans.set_index("step").max_ratio_pos0.get(3000, float("nan"))
                                                 for _, scans, _ in jobs13])
table13[["condition", "arm", "blocks", "d_model", "lr", "weight decay", "n_ctx", "params (M)", "steps", "epochs",
         "ratio at pos 0, step 3000", "largest ratio at pos 0", "largest ratio elsewhere", "rule hits (all scans)",
         "best val loss", "final val loss", "final median |x|", "final max |x|", "first-token attention (final)",
         "first-token attention, most in one block (final)", "that block", "tokens/s"]].round(3)

# %%
t = table13.set_index("condition")
base = t.loc[base_name]
new = t.drop(index=base_name)
up = new[new["ratio at pos 0, step 3000"] > base["ratio at pos 0, step 3000"]]
down = new[new["ratio at pos 0, step 3000"] < base["ratio at pos 0, step 3000"]]
default_arm = new[new.arm == "default"]
blow = default_arm.loc[default_arm["final median |x|"].idxmax()]
blow_scans = next(scans for row, scans, _ in jobs13 if row["condition"] == blow.name)
base_scans = dict(jobs13[0][1][["step", "max_ratio_pos0"]].values)
late = []  # each condition against the baseline at the last step both scanned (the baseline: every 1500 steps)
for row, scans, _ in jobs13[1:]:
    step = max(st for st in scans.step if st in base_scans)
    late.append(f"{row['condition']} {scans.set_index('step').max_ratio_pos0[step]:.0f} vs {base_scans[step]:.0f} "
                f"at step {int(step)}")
rounds = json.loads((s13 / "summary.json").read_text())["_rounds"]
through = []
for name, r in rounds.items():
    sel = t.loc[r["jobs"]]
    through.append(f"{name}, {len(sel)} processes: {sel['tokens/s'].sum() / 1e3:.0f}k tokens/s, MFU "
                   f"{(sel['tokens/s'] * sel['FLOPs/token']).sum() / 989.4e12:.1%}")
display(Markdown("\n".join([
    f"- Rule hits over the {len(new)} new conditions and all their scans: {int(new['rule hits (all scans)'].sum())}. "
    f"Largest top-1/median at position 0: {new['largest ratio at pos 0'].max():.0f} "
    f"({new['largest ratio at pos 0'].idxmax()}), against the baseline's {base['largest ratio at pos 0']:.0f}: "
    f"{1000 / new['largest ratio at pos 0'].max():.1f}x short of the rule.",
    f"- At step 3000 the baseline stood at {base['ratio at pos 0, step 3000']:.0f}. Higher: "
    + ", ".join(f"{n} {v:.0f}" for n, v in up["ratio at pos 0, step 3000"].items())
    + ". Lower: " + ", ".join(f"{n} {v:.0f}" for n, v in down["ratio at pos 0, step 3000"].items()) + ".",
    "- At the last step each condition and the baseline both scanned: " + "; ".join(late) + ".",
    f"- Where the whole stream grew, the ratio fell: {blow.name} ends with a median |x| of "
    f"{blow['final median |x|']:,.0f} per block and a top |x| of {blow['final max |x|']:,.0f}, ratio "
    f"{blow['final ratio at pos 0']:.0f}; yet its queries put {blow['first-token attention (final)']:.1%} of their "
    f"attention on the first token ({blow['first-token attention, most in one block (final)']:.1%} in block "
    f"{blow['that block']}; uniform over 256 keys: 2.0%) at its last scan, against "
    f"{blow_scans.first_token_mass.iloc[-2]:.1%} one scan earlier, with no massive activation at position 0: one "
    f"scan of an unstable run (validation loss {blow['best val loss']:.2f} at best, {blow['final val loss']:.2f} at "
    f"the end), not a settled sink.",
    f"- The text is memorised as before: the new conditions ran {int(new['steps'].min())}-{int(new['steps'].max())} "
    f"steps ({new['epochs'].min():.0f}-{new['epochs'].max():.0f} epochs); best validation loss "
    f"{new['best val loss'].min():.2f}-{new['best val loss'].max():.2f}, final {new['final val loss'].min():.2f}-"
    f"{new['final val loss'].max():.2f} (windows of 1024 tokens are scored with more context, so the context-1024 "
    f"run's losses are lower by construction).",
    "- Throughput, sums over the processes sharing the GPU: " + "; ".join(through) + "."])))

# %% [markdown]
# ## Is fresh text the missing condition? The closest condition on less of the text (session 14)
#
# Every session so far ended on "more fresh text than the offline corpora hold". That is tested here from the
# other side: the same condition (GPT-2 blocks, d_model 512, 8 blocks, lr 2e-3) on 1/k of the mix's training
# text, k = 1, 2, 4, 8, 16 (2.6M down to 0.16M tokens; `benchmarks/text_subsets.py`: every k-th training text,
# the same held-out text for every k, k = 1 the mix itself), five processes on the H200, run twice (the GPU's
# kernels are not deterministic, so the two replicates show the run-to-run spread). If fresh text raised the
# ratio, it would fall with k at a fixed step.

# %%
s14 = root / "benchmarks" / "raw" / "2026-12-04_s14_h200_text_fraction"
fractions = (1, 2, 4, 8, 16)
jobs14 = {(rep, k): job for rep in (1, 2) for k in fractions
          for job in sweep_jobs(s14 / f"replicate{rep}", [f"{base_name}_1of{k}"])}
fig = go.Figure()
palette = dict(zip(fractions, ("#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd")))
for (rep, k), (row, scans, _) in jobs14.items():
    fig.add_trace(go.Scatter(x=scans.step, y=scans.max_ratio_pos0, mode="lines+markers",
                             name=f"1/{k} of the text ({row['epochs'] / row['steps'] * 4500:.0f} epochs at step "
                                  f"4500), replicate {rep}",
                             line={"color": palette[k], "dash": "solid" if rep == 1 else "dot"}))
fig.add_hline(y=1000, line_dash="dot", annotation_text="rule: 1000")
fig.update_layout(xaxis_title="step (32 x 256 tokens each)", yaxis_title="top-1 |x| / median at position 0 "
                  "(max over blocks)", yaxis_type="log", template="plotly_white", height=480,
                  title="The closest condition on 1/k of the offline text, two replicates")
fig.show()


def at_step(scans: pd.DataFrame, column: str, step: int = 4500) -> float:
    return float(scans.set_index("step")[column].get(step, float("nan")))


table14 = pd.DataFrame([{
    "fraction": f"1/{k}", "replicate": rep, "training tokens (M)": TrainingRun.from_json(
        next((s14 / f"replicate{rep}" / row["condition"]).glob("run_*.json"))).data["train_tokens"] / 1e6,
    "epochs at step 4500": row["epochs"] / row["steps"] * 4500,
    "ratio at pos 0, step 1500": at_step(scans, "max_ratio_pos0", 1500),
    "ratio at pos 0, step 4500": at_step(scans, "max_ratio_pos0"),
    "ratio elsewhere, step 4500": at_step(scans, "max_ratio_other"),
    "rule hits (all scans)": row["rule hits (all scans)"], "best val loss": row["best val loss"],
    "val loss, step 4500": at_step(scans, "val_loss"),
    "first-token attention, step 4500": at_step(scans, "first_token_mass"), "tokens/s": row["tokens/s"],
    "FLOPs/token": row["FLOPs/token"]} for (rep, k), (row, scans, _) in jobs14.items()])
table14.drop(columns="FLOPs/token").round(3)

# %%
by_k = table14.groupby("fraction", sort=False)
r45, att = by_k["ratio at pos 0, step 4500"], by_k["first-token attention, step 4500"]
r15 = by_k["ratio at pos 0, step 1500"].mean()
spread = table14[table14.fraction == "1/1"]["ratio at pos 0, step 4500"]
ranks = table14[["training tokens (M)", "ratio at pos 0, step 4500", "first-token attention, step 4500",
                 "ratio at pos 0, step 1500"]].rank()
rho = ranks.corr().iloc[0]  # Spearman's rank correlation with the amount of text, over the ten runs
smallest = [scans for (rep, k), (_, scans, _) in jobs14.items() if k == max(fractions)]
never_below = all(sc.val_loss.iloc[1:].min() > sc.val_loss.iloc[0] for sc in smallest)  # scans after step 0
tokens_m, epochs = table14["training tokens (M)"], table14["epochs at step 4500"]
rep_sums = table14.groupby("replicate").apply(lambda g: (g["tokens/s"].sum(), (g["tokens/s"] * g["FLOPs/token"]).sum()
                                                          / 989.4e12), include_groups=False)
display(Markdown("\n".join([
    f"- Rule hits over both replicates and all their scans: {int(table14['rule hits (all scans)'].sum())}.",
    "- Top-1/median at position 0 at step 4500 (both replicates): "
    + "; ".join(f"{k} of the text {lo:.0f}-{hi:.0f}" for k, lo, hi in zip(r45.min().index, r45.min(), r45.max()))
    + f". Rank correlation with the amount of text over the ten runs: {rho.iloc[1]:+.2f}; the two runs of the full "
    f"text alone differ by {spread.max() / spread.min() - 1:.0%}.",
    "- Early on (step 1500, mean of the replicates: " + ", ".join(f"{k} {v:.0f}" for k, v in r15.items())
    + f"; rank correlation with the amount of text {rho.iloc[3]:+.2f}) the ratio "
    + ("rises faster with less text: it grows while the text is memorised." if rho.iloc[3] < 0
       else "does not rise faster with less text."),
    f"- Attention on the first token at step 4500 {'grows' if rho.iloc[2] > 0.5 else 'does not grow clearly'} with "
    "the text: "
    + ", ".join(f"{k} {lo:.1%}-{hi:.1%}" for k, lo, hi in zip(att.min().index, att.min(), att.max()))
    + f" (uniform over 256 keys: 2.0%; rank correlation with the amount of text {rho.iloc[2]:+.2f}), as Gu et al. "
    "(2024) found for sinks and training data.",
    f"- So over these {tokens_m.max() / tokens_m.min():.0f}x ({tokens_m.min():.2f}M-{tokens_m.max():.2f}M tokens, "
    f"{epochs.min():.0f}-{epochs.max():.0f} epochs by step 4500), more distinct text raises the first-token attention "
    f"(rank correlation {rho.iloc[2]:+.2f}) and not the ratio ({rho.iloc[1]:+.2f}). Whether billions of tokens, each "
    "seen once (the paper's regime), would make the massive activation is what remains untested: neither that much "
    "offline text nor that much GPU time is here.",
    f"- With 1/{max(fractions)} of the text the validation loss "
    + ("never fell below its value at step 0" if never_below else "fell below its value at step 0")
    + f" ({smallest[0].val_loss.iloc[0]:.2f}) in either replicate"
    + (": the smallest set overfits from the first scan." if never_below else "."),
    "- Throughput, five processes sharing the GPU: " + "; ".join(
        f"replicate {rep}: {tok / 1e3:.0f}k tokens/s, MFU {mfu:.1%}" for rep, (tok, mfu) in rep_sums.items()) + "."])))

# %% [markdown]
# A resumed arm (`resume=True`, `mi-massive train --resume`) goes on from its last scan's `TrainState`. On the
# CPU it ends with exactly the records and weights of an arm that was never stopped (tests/test_train.py); on the
# H200 (`benchmarks/resume_check.py`: torch.compile, bf16, fused AdamW) its validation loss after the resume stays
# within the spread of two uninterrupted runs:

# %%
rc = json.loads((root / "benchmarks" / "raw" / "2026-12-04_s14_h200_resume_check" / "resume_check.json").read_text())
pd.DataFrame({arm: {k: v for k, v in r.items() if k not in ("scans", "tokens_per_s")} for arm, r in rc["arms"].items()})
