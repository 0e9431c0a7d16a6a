"""The bare HF model behind the bridge: unwiring restores the bridge exactly, and a scan on the bare trunk
finds what the bridge's hooks find, in every declared family and on smollm2."""

import copy
from contextlib import contextmanager

import pytest
import torch
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

from mi_massive import _inputs, arch, detect, engine
from mi_massive.engine import _bare, _stream
from mi_massive._hooks import hooked
from mi_massive.testing import ModelState, planted, tiny_model

FAMILIES = arch.known_families()
PROMPTS = ["hello world, this is a test", "abc def ghi jkl mno pq", "xyz"]
_MODELS: dict[str, object] = {}


def model_of(family: str):
    if family not in _MODELS:
        _MODELS[family] = tiny_model(family)
    return _MODELS[family]


def wiring(model) -> dict:
    """Everything unwiring could disturb: the module tree (by identity), the hook table, the attention setting."""
    return {
        "modules": [(n, id(m)) for n, m in model.named_modules(remove_duplicate=False)],
        "hooks": {n: id(h) for n, h in model.hook_dict.items()},
        "attn": (model.original_model.config._attn_implementation, model.cfg.attn_implementation),
    }


@contextmanager
def unwired_checked(model):
    """`unwired`, asserting inside that no bridge component is left in the HF model."""
    with _bare.unwired(model) as hf:
        assert hf is model.original_model
        assert not [n for n, m in hf.named_modules() if isinstance(m, GeneralizedComponent)]
        yield hf


@pytest.mark.parametrize("family", FAMILIES)
def test_unwired_is_plain_hf_and_restores_the_bridge_exactly(family):
    model = model_of(family)
    toks = model.to_tokens(PROMPTS[0])
    with torch.inference_mode():
        logits = model(toks)
    before, state = wiring(model), ModelState.of(model)
    with unwired_checked(model) as hf, torch.inference_mode():
        torch.testing.assert_close(hf(toks).logits, logits, rtol=1e-4, atol=1e-4)  # GPT-2 rounds apart
    assert wiring(model) == before
    with pytest.raises(KeyError), unwired_checked(model):
        raise KeyError("inside the with-block")
    assert wiring(model) == before
    state.check(model)
    with torch.inference_mode():
        again, cache = model.run_with_cache(toks, names_filter=arch.hook.resid_post(1))
    assert torch.equal(again, logits) and cache[arch.hook.resid_post(1)].shape == (1, toks.shape[1], 64)


def _scans(model, prompts, **kw):
    """(bare-trunk scan, bridge scan); the first must not touch the bridge's hooks."""
    tokens = _inputs.tokenize(model, prompts)
    with engine.configure(bare=False):
        bridge = detect.scan_tokens(model, tokens, k=3, batch_size=2, progress=False, **kw)
    real_run = _stream.run_with_hooks
    _stream.run_with_hooks = None  # any fallback to the bridge would fail here
    try:
        bare = detect.scan_tokens(model, tokens, k=3, batch_size=2, progress=False, **kw)
    finally:
        _stream.run_with_hooks = real_run
    return bare, bridge


def assert_same_scan(a, b, *, rtol: float) -> None:
    (found_a, prof_a), (found_b, prof_b) = a, b
    where = ["prompt", "layer", "pos", "dim"]
    assert found_a.to_dataframe()[where].equals(found_b.to_dataframe()[where])
    torch.testing.assert_close(found_a.value, found_b.value, rtol=rtol, atol=0)
    torch.testing.assert_close(found_a.median, found_b.median, rtol=rtol, atol=0)
    torch.testing.assert_close(prof_a.top, prof_b.top, rtol=rtol, atol=0)
    torch.testing.assert_close(prof_a.median, prof_b.median, rtol=rtol, atol=0)
    assert torch.equal(found_a.nonfinite, found_b.nonfinite)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rule", [dict(threshold=100.0, ratio=1000.0), dict(threshold=0.3, ratio=3.0)])
def test_bare_scan_equals_bridge_scan(family, rule):
    """Same hits and profile; values equal bit for bit except GPT-2, whose bridge attention rounds differently
    (relative 2.9e-5 on an H200)."""
    model = model_of(family)
    bare, bridge = _scans(model, PROMPTS, **rule)
    assert len(bare[0]) > 0
    assert_same_scan(bare, bridge, rtol=1e-4 if family == "gpt2" else 0.0)


def test_bare_scan_exact_rerun_when_every_candidate_passes():
    model = model_of("llama")
    bare, bridge = _scans(model, PROMPTS[:2], threshold=0.0, ratio=0.0)
    assert len(bare[0]) == sum(len(t) for t in _inputs.tokenize(model, PROMPTS[:2])) * 64 * 4
    assert_same_scan(bare, bridge, rtol=0.0)


def test_scan_under_an_intervention_uses_the_bridge():
    """Hooks on the bridge (an intervention) are not seen by the bare model: the scan must fall back."""
    model = model_of("llama")
    plant = planted(model)

    def zero(x, hook):
        x[..., plant.dim] = 0.0
        return x

    assert len(detect.find_massive_activations(model, PROMPTS)) > 0
    with hooked(model, [(arch.hook.resid_post(plant.layer), zero)]):  # raises if the hook never fired
        assert len(detect.find_massive_activations(model, PROMPTS)) == 0  # the plant is written only once


def test_unsupported_trunk_falls_back_to_the_bridge(monkeypatch):
    model = model_of("qwen2")
    clean = detect.find_massive_activations(model, PROMPTS).to_dataframe()

    def refuse(tokens, on_layer, masks=None):
        raise _bare.Unsupported("test")

    monkeypatch.setattr(_bare, "trunk_runner", lambda model: refuse)  # refused on the first pass
    assert detect.find_massive_activations(model, PROMPTS).to_dataframe().equals(clean)


def test_trunk_refuses_a_layer_output_that_is_not_the_residual():
    model = model_of("llama")
    before, run = wiring(model), _bare.trunk_runner(model)
    n_hooks = sum(len(m._forward_hooks) for m in model.original_model.modules())  # the bridge keeps some
    layer = model.blocks[2].original_component  # the HF decoder layer
    handle = layer.register_forward_hook(lambda module, args, out: (out,))  # as transformers 4 layers returned
    try:
        with pytest.raises(_bare.Unsupported, match="decoder layer 2 returned tuple"):  # raised mid-pass
            run(model.to_tokens("abc"), lambda layer, x: None)
    finally:
        handle.remove()
    assert wiring(model) == before and sum(len(m._forward_hooks) for m in model.original_model.modules()) == n_hooks


@pytest.mark.parametrize("family", FAMILIES)
def test_the_plan_sees_every_hook_point_of_the_bridge(family):
    """What the bare trunk checks for hooks is every HookPoint the bridge holds, once each."""
    from transformer_lens.hook_points import HookPoint

    model = model_of(family)
    plan = _bare._Plan(model)
    every = {id(m) for m in model.modules() if isinstance(m, HookPoint)}
    assert sorted(map(id, plan.hook_points)) == sorted(every) and not plan.hooked()


def test_the_trunk_is_planned_once_and_checked_on_every_call():
    """The walk of the tree is kept beside the model; a hook added since, or a changed module, is still seen."""
    model = model_of("llama")
    _bare.trunk_runner(model)
    kept = _bare.kept_trunk(model)
    _bare.trunk_runner(model)
    assert _bare.kept_trunk(model) is kept
    with hooked(model, [(arch.hook.resid_post(1), lambda x, hook: None)], require_fired=False):
        with pytest.raises(_bare.Unsupported, match="hooks are attached"):
            _bare.trunk_runner(model)
    parent, name, component, _ = kept.plan.swaps[-1]
    parent._modules[name] = copy.deepcopy(component)  # a module replaced: planned again, from the new tree
    try:
        _bare.trunk_runner(model)
        assert _bare.kept_trunk(model) is not kept
    finally:
        parent._modules[name] = component


def test_trunk_refuses_a_bridge_with_hooks_or_processed_weights():
    model = model_of("llama")
    with hooked(model, [(arch.hook.resid_post(0), lambda x, hook: None)], require_fired=False):
        with pytest.raises(_bare.Unsupported, match="hooks are attached"):
            _bare.trunk_runner(model)
    model._weights_processed = True
    try:
        with pytest.raises(_bare.Unsupported, match="processed its weights"):
            _bare.trunk_runner(model)
    finally:
        model._weights_processed = False


@pytest.mark.real
def test_bare_scan_equals_bridge_scan_on_smollm2(smollm2, prompts):
    bare, bridge = _scans(smollm2, prompts, threshold=100.0, ratio=1000.0)
    assert 507 in bare[0].dims
    assert_same_scan(bare, bridge, rtol=0.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_recorded_masks_given_back_give_the_same_pass(family):
    """What a CUDA graph's capture relies on (`_graphs`): the masks a pass records, handed to the layers in
    place of what the model builds, give the same outputs; other masks change them (so they are used)."""
    model = model_of(family)
    run = _bare.trunk_runner(model)
    toks = torch.stack([_inputs.tokenize(model, "hello world, this is a test")[0]] * 2)

    def outputs(masks=None) -> list:
        got = []
        run(toks, lambda layer, x: got.append(x.clone()), masks)
        return got

    masks: dict = {}
    plain = outputs(masks)
    assert sorted(masks) == list(range(model.cfg.n_layers))
    assert all(torch.equal(a, b) for a, b in zip(plain, outputs(dict(masks))))
    if all(m is None for m in masks.values()):  # blocks given no mask keyword (GPT-2): nothing to hand over
        assert family == "gpt2"
        return
    assert all(m.dim() == 4 and m.shape[0] == 2 and m.shape[-1] == toks.shape[1] for m in masks.values())
    open_mask = {i: torch.zeros_like(m) for i, m in masks.items()}  # every position sees every other
    assert not torch.equal(outputs(open_mask)[-1], plain[-1])
    with pytest.raises(_bare.MaskError, match="no 4D attention_mask"):
        outputs({**masks, 0: None})
