"""What every frozen result shares: a sentence repr, show(), save/load without the model."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import torch

R = TypeVar("R", bound="Result")


class Result:
    """Mixin for the frozen dataclasses that public functions return."""

    def sentence(self) -> str:  # overridden: one sentence that says what was found
        return type(self).__name__

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.sentence()}>"

    def to_dataframe(self):  # overridden
        raise NotImplementedError

    def show(self, **kwargs: Any) -> Any:
        """A view that displays itself in Jupyter (circuitsvis / plotly / ipywidgets)."""
        from . import viz

        return viz.show(self, **kwargs)

    def save(self, path: str | Path) -> None:
        """Save the result (tensors and provenance) so it can be shown later without the model."""
        torch.save({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, path)

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        return cls(**torch.load(path, weights_only=False))
