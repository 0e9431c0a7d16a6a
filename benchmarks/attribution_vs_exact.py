"""Why path patching is exact and costs ~25 forward-equivalents on a CPU: its linear approximation is wrong here.

    python benchmarks/attribution_vs_exact.py [model] [prompt]     # default smollm2-135m; "tiny": a planted LLaMA

Attribution patching (a first-order Taylor estimate: (corrupted - clean activation) . d metric / d activation,
from one clean forward and backward plus the clean/corrupted pass) would cost ~3 forward-equivalents for
every receiver at once, the issue's target. This script measures it against `path_patch` (exact) for every
receiver of the massive activation's removal: per path, rank and linear correlation, the summed effect, the
direct path, and how many of the exact top-5 receivers the estimate also ranks top-5. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from mi_massive import find_massive_activations, load_model, path_patch
from mi_massive import patching as pp_module
from mi_massive._hooks import hooked
from mi_massive._patch_runs import clean_and_corrupted, hook_name, metric_rows


PROMPT = "Summer is warm. Winter is cold. The quick brown fox jumps over the lazy dog."  # bench.py's


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv: list[str]) -> None:
    name = argv[0] if argv else "smollm2-135m"
    prompt = argv[1] if len(argv) > 1 else PROMPT
    torch.set_grad_enabled(False)
    if name == "tiny":
        from mi_massive.testing import tiny_model

        model = tiny_model("llama")
    else:
        model = load_model(name)
    toks = model.to_tokens(prompt)
    path_patch(model, prompt, batch_size=64)  # warm-up
    fwd = min(_timed(lambda: model(toks, return_type="loss")) for _ in range(4))
    t = time.perf_counter()
    exact = path_patch(model, prompt, batch_size=64)
    t_exact = time.perf_counter() - t

    t = time.perf_counter()
    found = find_massive_activations(model, prompt)
    sites = [[(int(r.first_layer), int(r.pos), int(r.dim)) for r in found.sites().itertuples()]]
    plan = pp_module._plan(model, sites, ("massive",), pp_module.PATHS, None, (100.0, 1000.0))
    pair = clean_and_corrupted(model, toks, ("massive",), "zero", "loss", plan.names, sites=sites, resid_layer=None,
                               threshold=100.0, ratio=1000.0)
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def watch(hook_point: str):
        def fn(x, hook):  # the bridge's hook points take in-place edits: add a zero that gradients reach
            delta = torch.zeros_like(x, requires_grad=True)
            deltas[hook_point] = (delta, x.detach().clone())
            return x.add_(delta)
        return fn

    with torch.enable_grad(), hooked(model, [(n, watch(n)) for n in plan.names]):
        metric_loss = metric_rows("loss", model(toks), toks)  # (1,), on CPU, with its graph
        metric_loss.sum().backward()
    t_attr = time.perf_counter() - t
    est = []
    for path, layer, head in plan.receivers:
        delta, clean = deltas[hook_name(model, path, layer)]
        corrupted = pair.source[hook_name(model, path, layer)]
        at = [(0, p) if path == "direct" else (0, p, head) for p in plan.positions[0]]
        est.append(sum(float(((corrupted[i] - clean[i]) * delta.grad[i]).sum()) for i in at))
    df = exact.to_dataframe().assign(estimate=est)
    rec = {"figure": "attribution patching vs exact path patching", "model": name, "receivers": len(df),
           "forward_s": fwd, "exact_forward_equivalents": t_exact / fwd,
           "attribution_forward_equivalents": t_attr / fwd,
           "total_effect": exact.total_effect}
    for path in ("k", "v"):
        d = df[df.path == path]
        rec[f"{path}_spearman"] = float(d.effect.corr(d.estimate, method="spearman"))
        rec[f"{path}_pearson"] = float(d.effect.corr(d.estimate))
        rec[f"{path}_sum_exact"], rec[f"{path}_sum_estimate"] = float(d.effect.sum()), float(d.estimate.sum())
    direct = df[df.path == "direct"].iloc[0]
    rec["direct_exact"], rec["direct_estimate"] = float(direct.effect), float(direct.estimate)
    top = set(df.effect.nlargest(5).index)
    rec["top5_overlap"] = len(top & set(df.estimate.nlargest(5).index))
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()}))


if __name__ == "__main__":
    main(sys.argv[1:])
