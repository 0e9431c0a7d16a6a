"""The engine's knobs: one settings object, changed only inside `configure` (which puts them back)."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Settings:
    """How the engine runs a scan. Every setting gives the same results; they trade speed and memory."""

    bare: bool = True  # run the bare HF trunk (no bridge hook points, no lm_head) wherever it stands in for the bridge
    cuda_graphs: bool = True  # on CUDA, replay CUDA graphs of the passes where the kept timings say it pays
    cuda_stats: str = "triton"  # "triton" (radix select, where Triton runs) or "sort" (segmented sort)
    group_bytes: int = 64 << 20  # on CUDA, block outputs gathered for one statistics call: more saves launches
    # on small models but adds to the forward's peak memory (benchmarks/RESULTS.md)
    sort_chunk: int = 1 << 22  # entries sorted at once on CUDA (bounds the sort's scratch memory)
    candidates: int = 64  # top |x| entries kept per prompt and layer as hit candidates (grown when all pass)

    def check(self) -> None:
        if self.cuda_stats not in ("triton", "sort"):
            raise ValueError(f"cuda_stats must be 'triton' or 'sort', got {self.cuda_stats!r}")
        for name in ("group_bytes", "sort_chunk", "candidates"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")


settings = Settings()


@contextmanager
def configure(**changes: object) -> Iterator[Settings]:
    """The engine's settings changed for the body of the `with`, and put back in `finally`.

        >>> from mi_massive import engine
        >>> with engine.configure(cuda_stats="sort"):
        ...     engine.settings.cuda_stats
        'sort'
        >>> engine.settings.cuda_stats
        'triton'
    """
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(f"unknown engine setting(s) {unknown}: known are {sorted(known)}")
    saved = dataclasses.replace(settings)
    for name, value in changes.items():
        setattr(settings, name, value)
    try:
        settings.check()
        yield settings
    finally:
        for f in dataclasses.fields(Settings):
            setattr(settings, f.name, getattr(saved, f.name))


_reported: set[str] = set()


def report_once(what: str, err: BaseException) -> None:
    """Warn that a fast path failed here and the call fell back (once per kind of failure in a process)."""
    key = f"{what}: {type(err).__name__}: {err}"
    if key in _reported:
        return
    _reported.add(key)
    warnings.warn(f"{what} failed ({type(err).__name__}: {err}); {_FALLBACK.get(what, 'falling back')} "
                  "(same results, slower)", RuntimeWarning, stacklevel=4)


_FALLBACK = {"the scan's Triton statistics": "sorting instead for this call"}
