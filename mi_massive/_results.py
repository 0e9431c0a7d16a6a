"""What every frozen result shares: a sentence repr, show(), save/load without the model.

A result file is one safetensors file: the tensors (and the numeric columns of tables) as safetensors tensors,
everything else as JSON in its header, with the result's class and the format's version. Opening one runs no
code (a pickle could: the files of mi_massive before format 1 were pickles, and are refused).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

R = TypeVar("R", bound="Result")

FORMAT = "mi_massive.result"
VERSION = 1
_KEY = "mi_massive"  # the safetensors metadata entry that holds the JSON


class Result:
    """Mixin for the frozen dataclasses that public functions return."""

    VIEW: ClassVar[str | None] = None  # the view that draws it: "module:function" under mi_massive.viz

    def sentence(self) -> str:  # overridden: one sentence that says what was found
        return type(self).__name__

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.sentence()}>"

    def to_dataframe(self):  # overridden
        raise NotImplementedError

    def show(self, **kwargs: Any) -> Any:
        """The view named by `VIEW`, drawn from this result alone: a `viz.View` that displays itself in Jupyter."""
        from . import viz

        return viz.show(self, **kwargs)

    def save(self, path: str | Path) -> None:
        """Save the result (tensors and provenance) to one file, so it can be shown later without the model.

            >>> acts.save("acts.safetensors"); MassiveActivations.load("acts.safetensors")   # doctest: +SKIP
        """
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        fields = {f.name: _encode(getattr(self, f.name), tensors, f.name) for f in dataclasses.fields(self)}
        header = {"format": FORMAT, "version": VERSION, "class": type(self).__name__,
                  "module": type(self).__module__, "fields": fields}
        save_file(tensors, str(path), metadata={_KEY: json.dumps(header, allow_nan=True)})

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        """A result saved by `save`. Checks the file's format, version and result class before reading it;
        refuses pickle files (older mi_massive), which could run code when opened."""
        header, tensors = _read(Path(path))
        name = header.get("class")
        if name != cls.__name__ and cls is not Result:
            raise ValueError(f"path {str(path)!r} holds a {name}, not a {cls.__name__}: load it with {name}.load")
        target = _result_class(header.get("module", ""), name, path) if cls is Result else cls
        fields = header.get("fields")
        expected = {f.name for f in dataclasses.fields(target)}
        if not isinstance(fields, dict) or not set(fields) <= expected:
            extra = sorted(set(fields or ()) - expected) if isinstance(fields, dict) else fields
            raise ValueError(f"path {str(path)!r}: a {name} with fields this version does not know: {extra}")
        values = {k: _decode(v, tensors, path) for k, v in fields.items()}
        missing = [f.name for f in dataclasses.fields(target)
                   if f.name not in values and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"path {str(path)!r}: the saved {name} lacks fields {missing}")
        return target(**values)


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The JSON header and the tensors of a result file; ValueError naming `path` for anything else."""
    where = f"path {str(path)!r}"
    if not path.is_file():
        raise ValueError(f"{where}: {'is a folder' if path.is_dir() else 'no such file'}, not a result file")
    with path.open("rb") as fh:
        start = fh.read(9)  # safetensors: an 8-byte header length, then the JSON header's "{"
        size = path.stat().st_size
        n = int.from_bytes(start[:8], "little") if len(start) == 9 else -1
        safetensors = 2 <= n <= size - 8 and start[8:9] == b"{"  # (its length's first byte may be 0x80)
        if not safetensors and (start[:4] == b"PK\x03\x04" or start[:1] == b"\x80"):
            raise ValueError(f"{where} is a pickle file (torch.save), the result format of mi_massive before format "
                             "version 1. Pickles can run code when opened, so it is not loaded: recompute the result "
                             "and save it again (or, for a file you trust, read it with torch.load yourself)")
        if not safetensors:
            raise ValueError(f"{where} is not an mi_massive result file (not safetensors, or truncated: "
                             f"{size} bytes)")
        try:
            meta = json.loads(start[8:] + fh.read(n - 1)).get("__metadata__") or {}
            header = json.loads(meta[_KEY])
        except (ValueError, KeyError, AttributeError, TypeError):
            raise ValueError(f"{where} is not an mi_massive result file (its safetensors header holds no "
                             "mi_massive result)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{where} is not an mi_massive result file (format {header.get('format')!r})")
    version = header.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ValueError(f"{where} was written in result format version {version!r} by a newer mi_massive; this "
                         f"one reads version {VERSION}: upgrade mi_massive")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ValueError(f"{where} is damaged or truncated ({exc})") from None
    return header, tensors


def _result_class(module: str, name: Any, path: Any) -> type:
    cls = _mi_massive_class(module, name)
    if cls is None or not issubclass(cls, Result):
        raise ValueError(f"path {str(path)!r} holds an unknown result class {module}.{name}")
    return cls


def _mi_massive_class(module: str, name: Any) -> type | None:
    """A dataclass of this package (nothing else is ever imported while loading)."""
    if not isinstance(module, str) or not isinstance(name, str) or not module.startswith("mi_massive."):
        return None
    try:
        cls = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
    return cls if isinstance(cls, type) and dataclasses.is_dataclass(cls) else None


def _encode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    """JSON for `value`; its tensors go to `tensors` under fresh keys."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().clone().contiguous()  # (safetensors refuses shared memory)
        return {"__tensor__": key}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, where) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors, where) for v in value]
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k, tensors, where), _encode(v, tensors, where)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__dataclass__": [type(value).__module__, type(value).__name__],
                "fields": {f.name: _encode(getattr(value, f.name), tensors, where) for f in dataclasses.fields(value)}}
    import numpy as np
    import pandas as pd

    if isinstance(value, np.generic):
        return _encode(value.item(), tensors, where)
    if isinstance(value, pd.DataFrame):
        columns = []
        for name in value.columns:
            col = value[name]
            if col.dtype.kind in "biuf":
                columns.append([name, str(col.dtype), _encode(torch.from_numpy(col.to_numpy().copy()), tensors, where)])
            else:
                columns.append([name, str(col.dtype), _encode(col.tolist(), tensors, where)])
        index = value.index
        plain = isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1 and index.name is None
        return {"__dataframe__": columns, "index": None if plain else _encode(index.tolist(), tensors, where),
                "index_name": index.name}
    raise TypeError(f"{where}: cannot save a {type(value).__name__} in a result file")


def _decode(value: Any, tensors: dict[str, torch.Tensor], path: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors, path) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        try:
            return tensors[value["__tensor__"]]
        except KeyError:
            raise ValueError(f"path {str(path)!r}: tensor {value['__tensor__']!r} is missing from the file") from None
    if "__float__" in value:
        return float(value["__float__"])
    if "__tuple__" in value:
        return tuple(_decode(v, tensors, path) for v in value["__tuple__"])
    if "__dict__" in value:
        return {_decode(k, tensors, path): _decode(v, tensors, path) for k, v in value["__dict__"]}
    if "__dataclass__" in value:
        module, name = value["__dataclass__"]
        cls = _mi_massive_class(module, name)
        if cls is None:
            raise ValueError(f"path {str(path)!r} holds an unknown class {module}.{name}")
        return cls(**{k: _decode(v, tensors, path) for k, v in value["fields"].items()})
    if "__dataframe__" in value:
        import pandas as pd

        data = {}
        for name, dtype, column in value["__dataframe__"]:
            col = _decode(column, tensors, path)
            data[name] = pd.Series(col.numpy() if isinstance(col, torch.Tensor) else col, dtype=dtype)
        frame = pd.DataFrame(data, columns=[c[0] for c in value["__dataframe__"]])
        if value.get("index") is not None:
            frame.index = pd.Index(_decode(value["index"], tensors, path), name=value.get("index_name"))
        return frame
    raise ValueError(f"path {str(path)!r}: unknown entry {sorted(value)[:3]} in the file")
