"""`TrainingRun`: what the lab measured, per arm, scan and layer; saved and drawn without the models."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._results import Result

COLORS = {"default": "#d62728", "sink_token": "#1f77b4", "attn_bias": "#2ca02c", "softmax1": "#9467bd",
          "sigmoid": "#8c564b", "gated": "#ff7f0e"}
SHARE = 0.5  # a layer "has hits at a fixed position" when this share of the held-out windows has a hit there


def _float(x: Any) -> float:
    """A record's number; a missing one (the step-0 scan has no training loss yet) as NaN."""
    return float("nan") if x is None else float(x)


@dataclass(frozen=True, repr=False)
class TrainingRun(Result):
    """Emergence curves of every arm: per scan (step) and layer, the top-1 |x| / median at position 0 and at the
    other positions, the paper rule's hits, attention on the first token and on k', and the validation loss."""

    arms: tuple[str, ...]
    curves: pd.DataFrame  # one row per (arm, step, layer): see probe.probe
    arm_info: pd.DataFrame  # one row per arm: parameters, throughput, MFU, epochs, checkpoint folder
    spec: dict  # the LabSpec every arm shared
    data: dict  # the token data: name, token counts, description, licence
    threshold: float = 100.0
    ratio: float = 1000.0
    notes: tuple[str, ...] = field(default=())

    # --- building --------------------------------------------------------------------------------------------
    @classmethod
    def from_records(cls, records: list[dict], *, spec: Any, data: dict) -> "TrainingRun":
        import dataclasses

        spec_d = dataclasses.asdict(spec) if dataclasses.is_dataclass(spec) else dict(spec)
        curves = pd.DataFrame([r for rec in records for r in rec["rows"]])
        info = pd.DataFrame([{k: ("" if v is None else v) for k, v in rec.items() if k != "rows"} for rec in records])
        return cls(tuple(r["arm"] for r in records), curves, info, spec_d, dict(data),
                   float(spec_d.get("threshold", 100.0)), float(spec_d.get("ratio", 1000.0)))

    @classmethod
    def merge(cls, runs: list["TrainingRun"]) -> "TrainingRun":
        """One run from runs of other arms under the same spec (arms trained in parallel processes)."""
        if not runs:
            raise ValueError("nothing to merge")
        base = runs[0]
        for r in runs[1:]:
            if r.spec != base.spec:
                raise ValueError(f"runs differ in spec: {base.spec} vs {r.spec}")
        arms = tuple(a for r in runs for a in r.arms)
        if len(set(arms)) != len(arms):
            raise ValueError(f"arms repeat across runs: {arms}")
        return cls(arms, pd.concat([r.curves for r in runs], ignore_index=True),
                   pd.concat([r.arm_info for r in runs], ignore_index=True), base.spec, base.data, base.threshold,
                   base.ratio, tuple(n for r in runs for n in r.notes))

    # --- records (JSON) ----------------------------------------------------------------------------------------
    def to_json(self, path: str | Path | None = None) -> str:
        """The run as JSON (what benchmarks/raw keeps and the notebook reads)."""
        text = json.dumps({"format": "mi_massive.TrainingRun", "arms": list(self.arms),
                           "curves": json.loads(self.curves.to_json(orient="records")),
                           "arm_info": json.loads(self.arm_info.to_json(orient="records")),
                           "spec": self.spec, "data": self.data, "threshold": self.threshold,
                           "ratio": self.ratio, "notes": list(self.notes)}, indent=0)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> "TrainingRun":
        text = Path(source).read_text() if not str(source).lstrip().startswith("{") else str(source)
        d = json.loads(text)
        if d.get("format") != "mi_massive.TrainingRun":
            raise ValueError(f"not a TrainingRun record (format {d.get('format')!r})")
        return cls(tuple(d["arms"]), pd.DataFrame(d["curves"]), pd.DataFrame(d["arm_info"]), d["spec"], d["data"],
                   float(d["threshold"]), float(d["ratio"]), tuple(d.get("notes", ())))

    # --- tables ------------------------------------------------------------------------------------------------
    def to_dataframe(self) -> pd.DataFrame:
        """One row per (arm, step): validation loss, the largest top-1/median over layers at position 0 and
        elsewhere, the share of layers with rule hits at one fixed position (and which), attention mass."""
        rows = []
        n_layers = int(self.curves.layer.max()) + 1 if len(self.curves) else 0
        for (arm, step), g in self.curves.groupby(["arm", "step"], sort=False):
            fixed = g[g.hit_pos_share >= SHARE]
            pos = fixed.hit_pos_mode.mode()
            rows.append({
                "arm": arm, "step": int(step), "tokens": int(g.tokens.iloc[0]), "val_loss": float(g.val_loss.iloc[0]),
                "train_loss": _float(g.train_loss.iloc[0]),
                "max_ratio_pos0": float(g.ratio_pos0.max()), "max_ratio_other": float(g.ratio_other.max()),
                "max_ratio": float(max(g.ratio_pos0.max(), g.ratio_other.max())),
                "n_hits": int(g.n_hits.sum()), "layers_with_hits": int((g.n_hits > 0).sum()),
                "fixed_pos_layers": len(fixed) / n_layers, "fixed_pos": int(pos.iloc[0]) if len(pos) else -1,
                "first_token_mass": float(g.first_token_mass.mean()), "bias_mass": float(g.bias_mass.mean()),
            })
        return pd.DataFrame(rows)

    def common_step(self) -> int:
        """The last step every arm was scanned at (arms under a wall-clock budget may stop at different steps)."""
        steps = [set(g.step) for _, g in self.curves.groupby("arm", sort=False)]
        common = set.intersection(*steps) if steps else set()
        if not common:
            raise ValueError("the arms share no scanned step")
        return int(max(common))

    def final(self, step: int | None = None) -> pd.DataFrame:
        """The last scan of each arm (or its scan at `step`, e.g. `common_step()`), with its throughput."""
        df = self.to_dataframe()
        if step is not None:
            df = df[df.step == step]
            missing = [a for a in self.arms if a not in set(df.arm)]
            if missing:
                raise ValueError(f"no scan at step {step} for {', '.join(missing)}")
        last = df.loc[df.groupby("arm", sort=False).step.idxmax()].set_index("arm")
        info = self.arm_info.set_index("arm")[["n_params", "tokens_per_s", "mfu", "epochs"]]
        return last.join(info).loc[list(self.arms)].reset_index()

    def by_layer(self, arm: str, step: int | None = None) -> pd.DataFrame:
        """The per-layer rows of one arm's scan at `step` (default: the last)."""
        if arm not in self.arms:
            raise ValueError(f"unknown arm {arm!r}: this run has {', '.join(self.arms)}")
        g = self.curves[self.curves.arm == arm]
        step = int(g.step.max()) if step is None else step
        if step not in set(g.step):
            raise ValueError(f"no scan of {arm} at step {step}: scans at {sorted(set(g.step))}")
        return g[g.step == step].reset_index(drop=True)

    def sentence(self) -> str:
        if not len(self.curves):
            return "no scans"
        f = self.final().set_index("arm")
        parts = [f"{a}: {int(f.at[a, 'n_hits'])} hits, max top-1/median {f.at[a, 'max_ratio']:.3g}, "
                 f"val loss {f.at[a, 'val_loss']:.3f}" for a in self.arms]
        return f"{len(self.arms)} arm(s) after {int(f.step.max())} steps: " + "; ".join(parts)

    # --- pictures ---------------------------------------------------------------------------------------------
    def figure(self, *, height: int = 620):
        """A plotly figure: per arm, the emergence curves over training tokens (six panels)."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        df = self.to_dataframe()
        panels = [("max_ratio_pos0", "top-1 |x| / median, position 0 (max over layers)", "log"),
                  ("max_ratio_other", "top-1 |x| / median, other positions", "log"),
                  ("fixed_pos_layers", "share of layers with rule hits at one position", "linear"),
                  ("first_token_mass", "attention on the first token (mean over layers)", "linear"),
                  ("bias_mass", "attention on k' / the extra 1 (mean over layers)", "linear"),
                  ("val_loss", "validation loss (nats/token)", "linear")]
        fig = make_subplots(rows=2, cols=3, subplot_titles=[p[1] for p in panels], horizontal_spacing=0.07,
                            vertical_spacing=0.14)
        for i, (col, _, scale) in enumerate(panels):
            r, c = divmod(i, 3)
            for arm in self.arms:
                g = df[df.arm == arm]
                if g[col].isna().all():
                    continue
                fig.add_trace(go.Scatter(x=g.tokens, y=g[col], mode="lines+markers", name=arm, legendgroup=arm,
                                         showlegend=i == 0, line={"color": COLORS.get(arm)}), row=r + 1, col=c + 1)
            if scale == "log":
                fig.update_yaxes(type="log", row=r + 1, col=c + 1)
                fig.add_hline(y=self.ratio, line={"dash": "dot", "color": "#888"}, row=r + 1, col=c + 1)
            fig.update_xaxes(title_text="training tokens" if r else None, row=r + 1, col=c + 1)
        fig.update_layout(height=height, template="plotly_white", margin={"t": 60, "b": 40, "l": 50, "r": 20},
                          title=f"Training lab: {self.data.get('name', '')}, {self.spec.get('n_layers')} layers x "
                                f"d_model {self.spec.get('d_model')}, rule |x| > {self.threshold:g} and "
                                f">= {self.ratio:g} x median")
        return fig

    def show(self, **kwargs: Any):
        """The emergence curves and the final table, as a view that displays itself in Jupyter."""
        from ..viz._html import View

        cols = ["arm", "step", "val_loss", "max_ratio_pos0", "max_ratio_other", "n_hits", "fixed_pos_layers",
                "fixed_pos", "first_token_mass", "bias_mass", "tokens_per_s", "mfu"]
        return View((self.figure(**kwargs), self.final()[cols].round(4)), meta={"arms": list(self.arms)})

    def paper_figure(self, path: str | Path | None = None):
        """A matplotlib figure (needs matplotlib): emergence of the top-1/median ratio per arm, the final
        per-layer ratios, first-token attention and validation loss."""
        import matplotlib

        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        df = self.to_dataframe()
        fig, ax = plt.subplots(1, 4, figsize=(16, 3.6))
        for arm in self.arms:
            g, c = df[df.arm == arm], COLORS.get(arm)
            ax[0].plot(g.tokens / 1e6, g.max_ratio, "-o", ms=3, color=c, label=arm)
            last = self.by_layer(arm)
            ax[1].plot(last.layer, np.maximum(last.ratio_pos0, last.ratio_other), "-o", ms=3, color=c, label=arm)
            ax[2].plot(g.tokens / 1e6, g.first_token_mass, "-o", ms=3, color=c, label=arm)
            ax[3].plot(g.tokens / 1e6, g.val_loss, "-o", ms=3, color=c, label=arm)
        for a in ax[:2]:
            a.set_yscale("log")
            a.axhline(self.ratio, ls=":", color="#888")
        ax[0].set(xlabel="training tokens (M)", ylabel="top-1 |x| / median (max over layers)")
        ax[1].set(xlabel="layer", ylabel="top-1 |x| / median, final")
        ax[2].set(xlabel="training tokens (M)", ylabel="attention on first token")
        ax[3].set(xlabel="training tokens (M)", ylabel="validation loss (nats)")
        ax[0].legend(fontsize=8)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=150)
        return fig
