"""Every declared model family, on a tiny random model with a planted massive activation: found, traced, analysed.

Parametrised over `arch.known_families()`: a family declared supported without a tiny config fails here.
"""

import math

import pytest
import torch

from mi_massive import arch
from mi_massive.testing import ModelState, TINY_CONFIGS, planted as plant_of, tiny_model

FAMILIES = arch.known_families()
PROMPTS = ["hello world, this is a test", "abc def ghi jkl mno pq"]
_MODELS: dict[tuple[str, bool], object] = {}


def model_of(family: str, plant: bool = True):
    """One tiny model per (family, planted) for the whole module (booting takes a second or two)."""
    if (family, plant) not in _MODELS:
        _MODELS[(family, plant)] = tiny_model(family, plant=plant)
    return _MODELS[(family, plant)]


@pytest.fixture(params=FAMILIES)
def planted(request):
    model = model_of(request.param)
    before = ModelState.of(model)
    yield model
    before.check(model)  # every analysis leaves weights, hooks and mode as they were


def test_every_declared_family_has_a_tiny_config():
    assert sorted(TINY_CONFIGS) == sorted(FAMILIES), "declared families and tiny configs differ"


@pytest.mark.parametrize("family", FAMILIES)
def test_spec_matches_the_bridge(family):
    model = model_of(family)
    fam = arch.spec(model)
    assert fam.name == family
    assert model.original_model.config.model_type in fam.model_types
    cfg, hooks = model.cfg, model.hook_dict
    assert fam.gated_mlp == cfg.gated_mlp == ("blocks.0.mlp.hook_pre_linear" in hooks)
    assert fam.norm == {"RMS": "rms", "LN": "layernorm"}[cfg.normalization_type]
    assert fam.post_sublayer_norm == (arch.hook.ln_scale(0, "ln2_post") in hooks)
    assert fam.parallel_attn_mlp == (arch.hook.resid_mid(0) not in hooks)
    assert arch.n_kv_heads(cfg) == (cfg.n_key_value_heads or cfg.n_heads)
    every = [arch.hook.resid_pre(1), arch.hook.resid_post(1), arch.hook.attn_out(1), arch.hook.mlp_out(1),
             arch.hook.mlp_post(1), arch.hook.mlp_pre(1), arch.hook.z(1), arch.hook.q(1), arch.hook.k(1),
             arch.hook.v(1), arch.hook.pattern(1), arch.hook.ln_scale(1, "ln1"), arch.hook.ln_scale(1, "ln2")]
    assert [h for h in every if h not in hooks] == []


def test_residual_adds_up_in_every_family(planted):
    """resid_post = resid_pre + attn_out + mlp_out; the analyses' attributions rest on it."""
    from mi_massive._hooks import capture

    h = arch.hook
    names = [h.resid_pre(1), h.attn_out(1), h.mlp_out(1), h.resid_post(1)]
    _, c = capture(planted, planted.to_tokens(PROMPTS[0]), names)
    total = c[h.resid_pre(1)] + c[h.attn_out(1)] + c[h.mlp_out(1)]
    torch.testing.assert_close(total, c[h.resid_post(1)], rtol=1e-5, atol=1e-3)


def test_planted_massive_activation_is_found(planted):
    from mi_massive import find_massive_activations

    plant = plant_of(planted)
    df = find_massive_activations(planted, PROMPTS).to_dataframe()
    assert set(df.dim) == {plant.dim} and set(df.pos) == {0} and set(df.prompt) == {0, 1}
    assert df.layer.min() == plant.layer and df.layer.max() == planted.cfg.n_layers - 1
    at_writer = df[df.layer == plant.layer].value
    assert ((at_writer - plant.magnitude).abs() < 0.01 * plant.magnitude).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_random_model_has_no_massive_activation(family):
    from mi_massive import find_massive_activations

    acts = find_massive_activations(model_of(family, plant=False), PROMPTS)
    assert len(acts) == 0 and acts.summary().empty


def test_origin_sums_to_the_value_and_finds_the_planted_neuron(planted):
    from mi_massive.origin import trace_origin

    plant = plant_of(planted)
    o = trace_origin(planted, PROMPTS[0], n_random=1, search_steps=1)
    assert (o.layer, o.pos, o.dim, o.writer_layer) == (plant.layer, 0, plant.dim, plant.layer)
    assert math.isclose(o.components.contribution.sum(), o.value, rel_tol=1e-6)
    assert int(o.neurons.neuron.iloc[0]) == plant.neuron and o.neurons.share.iloc[0] > 0.99
    sw = o.super_weight
    assert (sw.layer, sw.row, sw.col, sw.rank) == (plant.layer, plant.dim, plant.neuron, 1)
    causal = o.causal.set_index("ablation").massive_value
    assert abs(causal.iloc[0]) > 0.99 * plant.magnitude  # baseline
    assert abs(causal[causal.index.str.startswith("zero top")].iloc[0]) < 0.01 * plant.magnitude
    assert abs(causal[causal.index.str.startswith("zero super weight")].iloc[0]) < 0.01 * plant.magnitude
    assert abs(causal[causal.index.str.contains("random")].iloc[0]) > 0.99 * plant.magnitude


def test_attention_sinks_and_implicit_bias(planted):
    from mi_massive import attention_sinks, implicit_bias, swap_implicit_bias

    sinks = attention_sinks(planted, PROMPTS)
    assert sinks.sink_positions == ((0,), (0,)) and sinks.first_massive_layer == plant_of(planted).layer
    assert ((sinks.sink_mass >= 0) & (sinks.sink_mass <= 1 + 1e-6)).all()
    bias = implicit_bias(planted, PROMPTS)
    assert bias.max_error < 1e-5  # sink part + rest == hook_z
    assert all(math.isfinite(x) for x in (bias.loss_original, bias.loss_swapped, bias.loss_removed))
    assert bias.common_sinks == (0,)
    with swap_implicit_bias(planted, bias, mode="remove"):
        removed = float(planted(PROMPTS[0], return_type="loss"))
    assert math.isfinite(removed) and removed != float(planted(PROMPTS[0], return_type="loss"))


def test_path_patching(planted):
    from mi_massive import path_patch

    same = path_patch(planted, PROMPTS, corruption=lambda x: x)  # a corruption that changes nothing
    assert same.total_effect == 0 and same.effect.abs().max() == 0
    pp = path_patch(planted, PROMPTS)
    n = planted.cfg
    n_kv = n.n_key_value_heads or n.n_heads
    later = n.n_layers - 1 - plant_of(planted).layer
    assert len(pp.metric) == later * (2 * n_kv + n.n_heads) + 1
    assert pp.positions == ((0,), (0,)) and torch.isfinite(pp.metric).all()
    assert pp.corrupted_metric != pp.clean_metric  # zeroing a 1000-sized value changes the loss


def test_interventions_remove_the_value_and_restore_the_model(planted):
    from mi_massive import find_massive_activations
    from mi_massive.constancy import massive_stats
    from mi_massive.interventions import build_intervention, intervene
    from mi_massive.perplexity import perplexity

    plant = plant_of(planted)
    clean_loss = float(planted(PROMPTS[0], return_type="loss"))
    zero = build_intervention(planted, PROMPTS, mode="zero")
    assert zero.dims == (plant.dim,) and zero.layers == ((plant.layer,),)
    with intervene(planted, zero):
        assert len(find_massive_activations(planted, PROMPTS)) == 0
        zeroed_loss = float(planted(PROMPTS[0], return_type="loss"))
    assert zeroed_loss != clean_loss
    assert float(planted(PROMPTS[0], return_type="loss")) == clean_loss  # restored
    assert len(find_massive_activations(planted, PROMPTS)) > 0
    stats = massive_stats(planted, PROMPTS, prepend_bos=(True,))
    assert stats.dims == (plant.dim,) and int(stats.first_layer[0, 0]) == plant.layer
    assert float(stats.std[0, 0, plant.layer, 0]) < 1e-3 * plant.magnitude  # BOS is the same token in every text
    ppl = perplexity(planted, PROMPTS, seq_len=8, intervention=zero)
    assert math.isfinite(ppl.perplexity) and ppl.perplexity != perplexity(planted, PROMPTS, seq_len=8).perplexity
    mean = build_intervention(planted, PROMPTS, mode="mean", stats=stats)  # the mean of a constant is that value
    assert abs(float(mean.first_value[plant.layer, 0]) - plant.magnitude) < 0.01 * plant.magnitude
    with intervene(planted, mean):
        assert abs(float(planted(PROMPTS[0], return_type="loss")) - clean_loss) < 1e-3
