"""Shared fixtures: the real embedded models (loaded once per session) and tiny planted models."""

import pytest
import torch

torch.set_grad_enabled(True)  # tests check that analyses do not depend on the global grad mode


@pytest.fixture(scope="session")
def smollm2():
    from mi_massive import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3():
    from mi_massive import load_model

    return load_model("gemma3-270m")


@pytest.fixture(scope="session")
def tiny_llama():
    from mi_massive.testing import tiny_model

    return tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_random():
    from mi_massive.testing import tiny_model

    return tiny_model("llama", plant=False)


PROMPTS = [
    "Summer is warm. Winter is cold.",
    "The quick brown fox jumps over the lazy dog.",
    "In 1905, Albert Einstein published four papers that changed physics.",
]


@pytest.fixture(scope="session")
def prompts():
    return list(PROMPTS)
