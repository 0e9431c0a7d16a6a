"""Batched path patching against the naive loop: wall time, model calls, forward-equivalents.

    python benchmarks/patching.py                       # tiny planted model, every receiver
    python benchmarks/patching.py smollm2-135m 12 20    # a real model, receivers in layers 12 and 20
"""

from __future__ import annotations

import sys
import time

from mi_massive import find_massive_activations, load_model, path_patch
from mi_massive.testing import tiny_model

PROMPTS = ["Summer is warm. Winter is cold.", "The quick brown fox jumps over the lazy dog."]


def main(argv: list[str]) -> None:
    model = tiny_model("llama") if not argv else load_model(argv[0])
    layers = [int(x) for x in argv[1:]] or None
    found = find_massive_activations(model, PROMPTS)  # shared, so both methods time only the patching
    runs = {}
    for method in ("batched", "naive"):
        t = time.perf_counter()
        runs[method] = path_patch(model, PROMPTS, layers=layers, massive=found, method=method, batch_size=64)
        runs[method + "_s"] = time.perf_counter() - t
    fast, slow = runs["batched"], runs["naive"]
    gap = float((fast.metric - slow.metric).abs().max())
    print(f"{fast.model_name}: {len(fast.path)} receivers + {len(fast.joint_path)} joint variants x "
          f"{len(PROMPTS)} prompts = {fast.forward_rows} forward-equivalents")
    print(f"batched: {fast.forward_calls} calls, {runs['batched_s']:.2f} s; naive: {slow.forward_calls} calls, "
          f"{runs['naive_s']:.2f} s; speed ratio {runs['naive_s'] / runs['batched_s']:.1f}x; max |diff| {gap:.2e}")


if __name__ == "__main__":
    main(sys.argv[1:])
