"""Vision Transformers (ViT, CLIP's vision tower, DINOv2 with registers) on tiny random configs with massive
activations planted at CLS, a register and a patch, fed real photos from scikit-image.

Each tiny model is saved and reloaded through `load_vision_model(directory)`, the path a Hub checkpoint takes.
"""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")
pytest.importorskip("PIL")

from mi_massive import arch  # noqa: E402
from mi_massive.testing import ModelState  # noqa: E402
from mi_massive.vision import load_vision_model, prepare_images, sample_images  # noqa: E402
from mi_massive.vision.images import layout  # noqa: E402
from mi_massive.vision.models import save_vision_model  # noqa: E402
from mi_massive.vision.testing import TINY_VISION_CONFIGS, model_plants, tiny_vision_model  # noqa: E402

FAMILIES = arch.known_vision_families()
IMAGES = sample_images(4)
_MODELS: dict = {}


def model_of(family: str, plant: bool = True):
    """The tiny model of `family` as saved to a directory and loaded back from it (one per module)."""
    key = (family, plant)
    if key not in _MODELS:
        import tempfile

        made = tiny_vision_model(family, plant=plant)
        path = save_vision_model(made, tempfile.mkdtemp(prefix=f"tiny-{family}-"))
        model = load_vision_model(path)
        model._mi_massive_name = made._mi_massive_name
        px = prepare_images(made, IMAGES)
        from mi_massive.vision import _run

        torch.testing.assert_close(_run.forward(model, px), _run.forward(made, px), rtol=0, atol=1e-4)
        _MODELS[key] = (model, model_plants(made))
    return _MODELS[key]


@pytest.fixture(params=FAMILIES)
def planted(request):
    model, plants = model_of(request.param)
    before = ModelState.of(model)
    yield model, plants
    before.check(model)  # every analysis leaves weights, hooks and mode as they were


def _pos(model, plant) -> int:
    lay = layout(model, prepare_images(model, IMAGES[:1]))
    return 0 if plant.kind == "cls" else 1 + plant.index if plant.kind == "register" else lay.pos(*plant.index)


def test_every_vision_family_has_a_tiny_config():
    assert sorted(TINY_VISION_CONFIGS) == sorted(FAMILIES)


def test_bridge_hooks_and_residual_add_up(planted):
    from mi_massive._hooks import capture

    model, _ = planted
    h = arch.hook
    names = [h.resid_pre(1), h.attn_out(1), h.mlp_out(1), h.resid_post(1), h.pattern(1), h.mlp_post(1), h.z(1)]
    _, c = capture(model, prepare_images(model, IMAGES[:2]), names)
    torch.testing.assert_close(c[h.resid_pre(1)] + c[h.attn_out(1)] + c[h.mlp_out(1)], c[h.resid_post(1)],
                               rtol=1e-5, atol=1e-3)
    n_tok = layout(model, prepare_images(model, IMAGES[:1])).n_tokens
    assert c[h.pattern(1)].shape == (2, model.cfg.n_heads, n_tok, n_tok)
    assert c[h.mlp_post(1)].shape[-1] == model.cfg.d_mlp


def test_inputs_paths_pil_arrays_and_tensors_agree(tmp_path):
    model, _ = model_of("vit")
    path = tmp_path / "a.png"
    IMAGES[0].save(path)
    ref = prepare_images(model, IMAGES[0])
    for x in (str(path), np.asarray(IMAGES[0]), np.asarray(IMAGES[0]) / 255.0, [IMAGES[0]], ref, ref[0]):
        torch.testing.assert_close(prepare_images(model, x), ref, atol=1e-2, rtol=0)
    for bad in ([], 3, torch.zeros(2, 3, 4, 4, dtype=torch.long), torch.zeros(1, 1, 32, 32), str(tmp_path / "no")):
        with pytest.raises(ValueError):
            prepare_images(model, bad)
    names = layout(model_of("dinov2_registers")[0], ref).names()
    assert names[:3] == ("CLS", "reg 0", "reg 1") and names[5] == "patch (0, 0)" and names[-1] == "patch (3, 3)"


def test_planted_tokens_and_dims_are_found(planted):
    from mi_massive.vision.detect import scan

    model, plants = planted
    acts, profile = scan(model, IMAGES)
    sites = acts.sites()
    got = {(int(r.pos), int(r.dim), int(r.first_layer)) for r in sites.itertuples()}
    assert got == {(_pos(model, p), p.dim, p.layer) for p in plants}
    assert sites.groupby(["pos", "dim"]).prompt.nunique().eq(len(IMAGES)).all()  # in every photo
    names = {r.token for r in sites.itertuples()}
    assert "CLS" in names and any(n.startswith("patch (1, 2)") for n in names)
    assert ("reg 0" in names) == any(p.kind == "register" for p in plants)
    assert profile.jump_layer == min(p.layer for p in plants) and float(profile.top[-1, 0]) > 1000


@pytest.mark.parametrize("family", FAMILIES)
def test_random_model_has_no_massive_activation(family):
    from mi_massive.vision.detect import find_massive_activations

    assert len(find_massive_activations(model_of(family, plant=False)[0], IMAGES)) == 0


def test_constancy_across_images(planted):
    from mi_massive.vision.detect import token_stats

    model, plants = planted
    stats = token_stats(model, IMAGES)
    want = {("CLS" if p.kind == "cls" else f"reg {p.index}" if p.kind == "register" else "patches", p.dim)
            for p in plants}
    assert set(stats.sites) == want
    last = stats.summary().set_index("token")
    assert (last.cv < 0.1).all() and (last["mean"].abs() > 1000).all()  # the patch value moves with the image
    single = token_stats(model, IMAGES[:1])
    assert torch.isnan(single.cv).all()  # one image: no spread to measure


def test_interventions_per_token_kind_remove_the_value_and_restore_the_model(planted):
    from mi_massive.vision import _run
    from mi_massive.vision.detect import find_massive_activations
    from mi_massive.vision.interventions import build_token_intervention, intervene_tokens, output_change

    model, plants = planted
    px = prepare_images(model, IMAGES[:2])
    clean = _run.forward(model, px)
    for p in plants:
        tokens = {"cls": "cls", "register": "registers", "patch": "patches"}[p.kind]
        zero = build_token_intervention(model, IMAGES[:2], tokens=tokens, mode="zero", dims="massive")
        mean = build_token_intervention(model, IMAGES[:2], tokens=tokens, mode="mean", dims="massive")
        assert zero.dims == (p.dim,)
        with intervene_tokens(model, zero):
            left = find_massive_activations(model, px).to_dataframe()
            assert not ((left.dim == p.dim) & (left.pos == _pos(model, p))).any()
        torch.testing.assert_close(_run.forward(model, px), clean, rtol=0, atol=0)  # restored
        change = output_change(model, IMAGES[:2], [mean, zero])
        assert 0 <= change.relative_change[0].mean() < change.relative_change[1].mean()  # the mean keeps more
        assert ((change.cosine <= 1 + 1e-5) & (change.cosine >= -1 - 1e-5)).all()
        if change.kind == "classifier":
            assert float(change.top1_kept[0].mean()) == 1.0
        else:
            assert torch.isnan(change.top1_kept).all()
    with pytest.raises(ValueError):
        build_token_intervention(model, IMAGES[:2], tokens="heads")


def test_fix_reg_mean_changes_outputs_less_than_zeroing():
    from mi_massive.vision.interventions import fix_reg_mean

    model, _ = model_of("dinov2_registers")
    for calibration, images, what in ((None, IMAGES, "the same photos"),
                                      (IMAGES[:2], sample_images(8)[4:], "2 other photos")):
        fix = fix_reg_mean(model, images, calibration=calibration)
        mean, zero = fix.relative_change.mean(1).tolist()
        print(f"\nFix-Reg-Mean on tiny DINOv2-registers, {len(images)} photos, mean over {what}: relative output "
              f"change {mean:.3g} (mean) vs {zero:.3g} (zero); cosine {fix.cosine.mean(1).tolist()}")
        assert mean < 0.1 * zero
    with pytest.raises(ValueError, match="no register"):
        fix_reg_mean(model_of("vit")[0], IMAGES)


def test_origin_finds_the_planted_neuron_and_super_weight(planted):
    from mi_massive.vision.origin import trace_origin

    model, plants = planted
    for p in plants:
        o = trace_origin(model, IMAGES[0], pos=_pos(model, p), dim=p.dim, n_random=1)
        assert "output change" in repr(o) and o.causal.loss.isna().all()
        assert (o.layer, o.writer_layer, o.dim) == (p.layer, p.layer, p.dim)
        assert o.str_tokens[o.pos] == {"cls": "CLS", "register": "reg 0", "patch": "patch (1, 2)"}[p.kind]
        assert math.isclose(o.components.contribution.sum(), o.value, rel_tol=1e-6)
        assert int(o.neurons.neuron.iloc[0]) == p.neuron and o.neurons.share.iloc[0] > 0.99
        assert (o.super_weight.row, o.super_weight.col) == (p.dim, p.neuron)
        causal = o.causal.set_index("ablation").massive_value
        assert abs(causal.iloc[0]) > 0.99 * p.magnitude * 0.9
        assert abs(causal[causal.index.str.startswith("zero top")].iloc[0]) < 0.01 * p.magnitude
        assert abs(causal[causal.index.str.startswith("zero super weight")].iloc[0]) < 0.01 * p.magnitude
        assert abs(causal[causal.index.str.contains("random")].iloc[0]) > 0.9 * p.magnitude


def test_attention_sinks_are_the_planted_tokens(planted):
    from mi_massive.vision.origin import attention_sinks

    model, plants = planted
    sinks = attention_sinks(model, IMAGES)
    assert set(sinks.sink_positions[0]) == {_pos(model, p) for p in plants}
    assert sinks.first_massive_layer == min(p.layer for p in plants)
    assert ((sinks.sink_mass >= 0) & (sinks.sink_mass <= 1 + 1e-6)).all() and torch.isfinite(sinks.alpha).all()
    given = attention_sinks(model, IMAGES, sink_positions=[0])
    assert given.sink_positions[0] == (0,) and given.first_massive_layer is None
    from mi_massive._hooks import capture

    _, c = capture(model, prepare_images(model, IMAGES), [arch.hook.pattern(2)])
    p = c[arch.hook.pattern(2)].double()  # (image, head, query, key)
    torch.testing.assert_close(given.sink_mass[2].double(), p[:, :, 1:, 0].mean((0, 2)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(given.alpha[2].double(), p[:, :, :, 0].mean((0, 2)), rtol=1e-5, atol=1e-6)


def test_pictures():
    from mi_massive.vision.detect import find_massive_activations
    from mi_massive.vision.viz import attention_grid, magnitudes_3d, patch_grid

    model, plants = model_of("dinov2_registers")
    fig = patch_grid(find_massive_activations(model, IMAGES[:1]))
    assert "reg 0" in fig.layout.annotations[0].text and len(fig.data) == model.cfg.n_layers - 1
    assert np.nanargmax(fig.data[-1].z) == 1 * 4 + 2  # patch (1, 2) of the 4 x 4 grid
    assert len(attention_grid(model, IMAGES[0], layer=3).data) == 1 + 4  # CLS and 4 registers
    assert "CLS dim 5" in magnitudes_3d(model, IMAGES[0], layer=3).layout.title.text


def test_every_vision_result_shows_itself():
    from mi_massive.viz import View
    from mi_massive.vision.detect import scan, token_stats
    from mi_massive.vision.interventions import fix_reg_mean
    from mi_massive.vision.origin import attention_sinks, trace_origin

    model, _ = model_of("dinov2_registers")
    acts, profile = scan(model, IMAGES[:2])
    for result in (acts, profile, token_stats(model, IMAGES[:2]), fix_reg_mean(model, IMAGES[:1]),
                   trace_origin(model, IMAGES[0], ablate=False), attention_sinks(model, IMAGES[:1])):
        assert isinstance(result.show(), View), type(result).__name__


def test_whole_clip_checkpoint_loads_its_vision_tower(tmp_path):
    """openai/clip-vit-large-patch14 is a whole CLIPModel: its vision tower and projection are what loads."""
    import transformers

    from mi_massive.vision import _run

    vision = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32,
                  patch_size=8)
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99)
    torch.manual_seed(0)
    full = transformers.CLIPModel(transformers.CLIPConfig(vision_config=vision, text_config=text, projection_dim=16))
    full.eval().save_pretrained(tmp_path)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path)
    model = load_vision_model(tmp_path)
    px = prepare_images(model, IMAGES[:2])
    want = full.get_image_features(pixel_values=px)
    want = getattr(want, "pooler_output", want)
    assert arch.spec(model).name == "clip_vision" and type(model.original_model).__name__.endswith("WithProjection")
    torch.testing.assert_close(_run.forward(model, px), want, rtol=0, atol=1e-5)


def test_swiglu_dinov2_the_giants_mlp():
    """DINOv2-with-registers-giant has gated (SwiGLU) MLPs: a gated family spec, the planted neurons still found."""
    from mi_massive.vision.detect import find_massive_activations
    from mi_massive.vision.origin import trace_origin

    model = tiny_vision_model("dinov2_registers", overrides={"use_swiglu_ffn": True})
    assert arch.spec(model).gated_mlp and "blocks.0.mlp.hook_pre_linear" in model.hook_dict
    plants = model_plants(model)
    sites = find_massive_activations(model, IMAGES[:2]).sites()
    assert {(int(r.pos), int(r.dim)) for r in sites.itertuples()} == {(_pos(model, p), p.dim) for p in plants}
    o = trace_origin(model, IMAGES[0], pos=0, dim=plants[0].dim, ablate=False)
    assert int(o.neurons.neuron.iloc[0]) == plants[0].neuron and o.writer_layer == plants[0].layer
