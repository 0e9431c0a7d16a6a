"""The hooked model, as the package's signatures name it: what every analysis needs of a model.

A structural type (`typing.Protocol`): a TransformerLens `TransformerBridge` in compatibility mode, as
`load_model` and `testing.tiny_model` return, has all of it; nothing has to inherit from it.

    >>> from mi_massive.testing import tiny_model
    >>> isinstance(tiny_model("llama"), HookedModel)
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # (importing this module loads no torch: the CLI's --help stays light)
    from torch import Tensor, nn


@runtime_checkable
class HookedModel(Protocol):
    """A model with TransformerLens hook points: `cfg` (n_layers, d_model, n_heads, device, ...), a tokenizer,
    `to_tokens`, `hooks(fwd_hooks=...)` and `hook_dict`, and a forward pass taking tokens."""

    cfg: Any
    tokenizer: Any

    def __call__(self, input: Any, *args: Any, **kwargs: Any) -> Any: ...

    def to_tokens(self, input: Any, *args: Any, **kwargs: Any) -> Tensor: ...

    def hooks(self, *args: Any, **kwargs: Any) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...
