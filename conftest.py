"""The docstring examples of mi_massive run as tests (`--doctest-modules`, pyproject.toml): `model` is a tiny
llama with a planted massive activation (`mi_massive.testing.tiny_model`), made once; `torch` is imported."""

import pytest
from _pytest.doctest import DoctestItem


@pytest.fixture(scope="session")
def _doctest_model():
    from mi_massive.testing import tiny_model

    return tiny_model("llama")


@pytest.fixture(autouse=True)
def _doctest_names(request, doctest_namespace):
    if isinstance(request.node, DoctestItem):
        import torch

        doctest_namespace.update(model=request.getfixturevalue("_doctest_model"), torch=torch)
