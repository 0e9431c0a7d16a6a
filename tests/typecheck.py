"""The runtime checker of the package's jaxtyping annotations at test time (jaxtyping's import hook:
`--jaxtyping-packages=mi_massive,typecheck.check` in pyproject.toml).

beartype checks the parameters, return values and result fields annotated with jaxtyping arrays (dtype and shape,
with the dimension names bound across one call). Other annotations are left alone: the functions check their
own arguments, with messages that name the argument and what would have been valid (what the tests assert),
which a type checker at their door would pre-empt."""

import typing

from beartype import beartype
from jaxtyping._array_types import AbstractArray


def _is_array(annotation) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, AbstractArray):
        return True
    return any(_is_array(a) for a in typing.get_args(annotation))


def check(fn):
    """`fn` (a copy jaxtyping makes of a function's signature) checked by beartype on its jaxtyping annotations."""
    arrays = {k: v for k, v in getattr(fn, "__annotations__", {}).items() if _is_array(v)}
    if not arrays:
        return fn
    fn.__annotations__ = arrays
    return beartype(fn)
