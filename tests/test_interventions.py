"""Interventions on a tiny planted model: zero / mean / value / control, positions, restore, rebuild detection."""

import warnings

import pytest
import torch

from mi_massive._hooks import capture
from mi_massive.interventions import build_intervention, intervene
from mi_massive.testing import ModelState, Plant, plant_massive_activation, planted, tiny_model

PROMPTS = ["Summer is warm. Winter is cold.", "The quick brown fox jumps.", "In 1905 Einstein wrote papers."]


def resid(model, text, layer, iv=None):
    toks = model.to_tokens(text)
    name = f"blocks.{layer}.hook_resid_post"
    if iv is None:
        return capture(model, toks, [name])[1][name][0]
    with intervene(model, iv):
        return capture(model, toks, [name])[1][name][0]  # (pos, d_model)


@pytest.fixture(scope="module")
def zero(tiny_llama):
    return build_intervention(tiny_llama, PROMPTS, mode="zero")


def test_zero_removes_the_planted_activation_and_the_model_is_restored(tiny_llama, zero):
    plant = planted(tiny_llama)
    assert zero.dims == (plant.dim,) and zero.layers == ((plant.layer,),) and zero.rebuilt == (False,)
    before = ModelState.of(tiny_llama)
    clean = resid(tiny_llama, "Hello there.", 3)
    assert clean[0, plant.dim] > 0.9 * plant.magnitude
    zeroed = resid(tiny_llama, "Hello there.", 3, zero)
    assert abs(float(zeroed[0, plant.dim])) < 1.0  # not rebuilt by later blocks
    before.check(tiny_llama)
    assert torch.equal(resid(tiny_llama, "Hello there.", 3), clean)


def test_mean_writes_the_calibration_mean_and_keeps_the_output(tiny_llama):
    plant = planted(tiny_llama)
    mean = build_intervention(tiny_llama, PROMPTS, mode="mean")
    assert abs(float(mean.first_value[plant.layer, 0]) - plant.magnitude) < 0.01 * plant.magnitude
    clean = resid(tiny_llama, "Hello there.", 3)
    with_mean = resid(tiny_llama, "Hello there.", 3, mean)
    torch.testing.assert_close(with_mean, clean, rtol=1e-3, atol=1e-2)  # BOS is constant: its mean is its value


def test_value_and_explicit_positions(tiny_llama):
    plant = planted(tiny_llama)
    iv = build_intervention(tiny_llama, PROMPTS, mode="value", value=-7.0, positions=[0, 2], check_rebuild=False)
    x = resid(tiny_llama, "Hello there.", plant.layer, iv)
    assert x[0, plant.dim] == -7.0 and x[2, plant.dim] == -7.0 and x[1, plant.dim] != -7.0
    first = build_intervention(tiny_llama, PROMPTS, mode="zero", positions="first_token", layers=0, dims=[plant.dim],
                               check_rebuild=False)
    assert resid(tiny_llama, "Hello there.", 0, first)[0, plant.dim] == 0.0


def test_control_zeroes_ordinary_dims_at_the_same_places(tiny_llama, zero):
    plant = planted(tiny_llama)
    control = build_intervention(tiny_llama, PROMPTS, mode="control")
    (target,) = control.targets
    assert control.dims == (plant.dim,) and target != plant.dim and control.layers == zero.layers
    clean = resid(tiny_llama, "Hello there.", plant.layer)
    x = resid(tiny_llama, "Hello there.", plant.layer, control)
    assert x[0, target] == 0.0 and clean[0, target] != 0.0
    assert torch.equal(x[0, plant.dim], clean[0, plant.dim])  # the massive value is untouched
    assert torch.equal(x[1:], clean[1:])  # only the massive position


def test_hooks_come_off_after_an_exception_and_must_fire(tiny_llama, zero):
    before = ModelState.of(tiny_llama)
    with pytest.raises(KeyError):
        with intervene(tiny_llama, zero):
            tiny_llama("Hello")
            raise KeyError("boom")
    before.check(tiny_llama)
    with pytest.raises(RuntimeError, match="never fired"):
        with intervene(tiny_llama, zero):
            pass  # no forward pass: nothing was intervened on
    before.check(tiny_llama)


def test_validation_before_any_forward_pass(tiny_llama, tiny_random):
    with pytest.raises(ValueError, match="mode must be one of zero, mean, value, control"):
        build_intervention(tiny_llama, PROMPTS, mode="half")
    with pytest.raises(ValueError, match=r"layer 9 out of range: valid layers are 0..3"):
        build_intervention(tiny_llama, PROMPTS, layers=9)
    with pytest.raises(ValueError, match="comes earlier"):
        build_intervention(tiny_llama, PROMPTS, layers=0)  # massive from block 1: positions unknown at block 0
    with pytest.raises(ValueError, match="value="):
        build_intervention(tiny_llama, PROMPTS, mode="value")
    with pytest.raises(ValueError, match="no massive dims"):
        build_intervention(tiny_random, PROMPTS)
    iv = build_intervention(tiny_llama, PROMPTS, check_rebuild=False)
    with pytest.raises(ValueError, match="built for tiny-llama"):
        with intervene(tiny_random, iv):
            pass


def test_a_value_rebuilt_by_later_blocks_is_detected_and_set_in_every_block():
    # block 2 writes dim 5 too, but only when block 1 has not already written it: zeroing block 1 alone is undone
    model = tiny_model("llama", plant=False)
    plant_massive_activation(model, Plant(layer=2, neuron=9, dim=5, magnitude=1000.0))
    plant_massive_activation(model, Plant(layer=1, neuron=7, dim=5, magnitude=1000.0))
    with pytest.warns(RuntimeWarning, match="back to 10[0-9]% of its clean size by block 3: later blocks rebuild"):
        auto = build_intervention(model, PROMPTS, mode="zero")
    assert auto.rebuilt == (True,) and auto.layers == ((1, 2, 3),)
    assert float(auto.recovery[2, 0]) > 0.9 and torch.isnan(auto.recovery[1, 0])
    assert abs(float(resid(model, "Hello there.", 3, auto)[0, 5])) < 1.0  # set in every block: gone for good
    with pytest.warns(RuntimeWarning, match='pass layers="range"'):
        single = build_intervention(model, PROMPTS, mode="zero", layers="first")
    assert single.layers == ((1,),) and single.rebuilt == (True,)
    assert float(resid(model, "Hello there.", 3, single)[0, 5]) > 900  # a single-block zero is undone
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_intervention(tiny_model("llama"), PROMPTS, mode="zero")  # written once: no warning
