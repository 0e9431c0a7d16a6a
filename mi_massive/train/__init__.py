"""Training lab: small causal LMs trained from scratch, one arm per attention variant, scanned as they learn.

    >>> from mi_massive.train import train
    >>> run = train(arms=("default", "attn_bias"), steps=200)      # doctest: +SKIP
    >>> run.show()                                                  # doctest: +SKIP

Importing this package loads nothing heavy; `train` and `TrainingRun` come from `lab` and `result` on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["train", "TrainingRun", "LabSpec", "TrainState", "VARIANTS"]

_LAZY = {"train": "lab", "LabSpec": "lab", "TrainState": "lab", "TrainingRun": "result", "VARIANTS": "modeling"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
