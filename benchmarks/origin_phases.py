"""Where trace_origin's time goes: seconds per phase, as forward-equivalents of one bridge forward with loss.

    python benchmarks/origin_phases.py [--device cuda]

Wraps the phases (capture, attribution, search passes, batched rows) with synchronised timers and prints
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

PROMPT = "Summer is warm. Winter is cold. The quick brown fox jumps over the lazy dog."


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    import mi_massive._ablate as ab
    import mi_massive._attribution as at
    import mi_massive.origin as og
    from mi_massive import load_model, trace_origin

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    spent: dict[str, float] = {}

    def timed(mod, name: str) -> None:
        fn = getattr(mod, name)

        def inner(*a, **k):
            sync()
            t = time.perf_counter()
            out = fn(*a, **k)
            sync()
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - t
            return out

        setattr(mod, name, inner)

    for mod, name in ((og, "capture"), (og, "_trace"), (og, "_neuron_table"), (at, "upstream"), (ab, "probe"),
                      (ab, "run_variants")):
        timed(mod, name)
    model = load_model("smollm2-135m", device=args.device)
    toks = model.to_tokens(PROMPT)
    trace_origin(model, PROMPT)
    fwd, total = [], []
    spent.clear()
    for _ in range(args.repeat):
        sync()
        t = time.perf_counter()
        model(toks, return_type="loss")
        sync()
        fwd.append(time.perf_counter() - t)
        t = time.perf_counter()
        trace_origin(model, PROMPT)
        sync()
        total.append(time.perf_counter() - t)
    f = statistics.median(fwd)
    rec = {"figure": "trace_origin phases", "device": args.device, "forward_s": f,
           "origin_s": statistics.median(total), "forward_equivalents": statistics.median(total) / f}
    rec.update({f"{k}_fe": v / args.repeat / f for k, v in spent.items()})
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()}), flush=True)


if __name__ == "__main__":
    main()
