"""trace_origin: exact attribution, writing block, neurons, super weight, upstream, causal check."""

from contextlib import contextmanager

import pytest
import torch

from mi_massive import Origin, trace_origin
from mi_massive._ablate import neuron_hook, zeroed_weights
from mi_massive._hooks import capture, run_with_hooks
from mi_massive.arch import hook
from mi_massive.testing import TINY_CONFIGS, planted, tiny_model
from origin_reference import reference_causal_table

PROMPT = "In 1905, Albert Einstein published four papers that changed physics."


def _no_hooks_left(model) -> bool:
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_weights(model, before) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _assert_exact(model, o):
    """Parts sum to the value, neuron parts to the writing MLP's output, upstream parts to hook_pre(_linear)."""
    assert o.components.contribution.sum() == pytest.approx(o.value, rel=1e-6)
    assert float(o.neuron_contribution.sum()) == pytest.approx(o.by_layer().mlp[o.writer_layer], rel=1e-5, abs=1e-4)
    w, n = o.writer_layer, o.super_weight.col
    cols = {"pre": hook.mlp_pre(w), "pre_linear": hook.mlp_pre_linear(w)}
    cols = {col: name for col, name in cols.items() if col in o.upstream}
    _, c = capture(model, o.tokens[None], list(cols.values()))
    for col, name in cols.items():
        assert o.upstream[col].sum() == pytest.approx(float(c[name][0, o.pos, n]), rel=1e-5)


@contextmanager
def _count_forwards(model):
    """Count the model's forward calls and the rows of logits each returns."""
    seen, forward = [], model.forward

    def counted(*a, **k):
        out = forward(*a, **k)
        seen.append(out.shape[0] if out.ndim == 3 else 1)
        return out

    model.forward = counted
    try:
        yield seen
    finally:
        del model.forward


def _causal(o, k: int = 5):
    """The causal table by label, the baseline value and loss, the top-k row and the random controls."""
    c = o.causal.set_index("ablation")
    top = c.loc[f"zero top-{k} neurons of block {o.writer_layer}"]
    return c, c.massive_value["baseline"], c.loss["baseline"], top, c.filter(like="random", axis=0)


# --- tiny planted model -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_origin(tiny_llama):
    return trace_origin(tiny_llama, "hello world", top_k=3, n_random=2)


def test_planted_writer_found_exactly(tiny_llama, tiny_origin):
    plant, o = planted(tiny_llama), tiny_origin
    assert isinstance(o, Origin) and o.found
    assert (o.layer, o.pos, o.dim) == (plant.layer, 0, plant.dim)  # default: largest hit, at its first layer
    assert o.writer_layer == plant.layer and o.writers() == [plant.layer]
    assert list(o.neurons.columns) == ["layer", "neuron", "activation", "weight", "contribution", "share",
                                       "cum_share", "gate", "linear"]
    assert int(o.neurons.neuron.iloc[0]) == plant.neuron and o.neurons.share.iloc[0] > 0.999
    sw = o.super_weight
    assert (sw.layer, sw.row, sw.col, sw.rank) == (plant.layer, plant.dim, plant.neuron, 1)
    assert sw.value == pytest.approx(float(tiny_llama.blocks[plant.layer].mlp.W_out[plant.neuron, plant.dim]))
    assert f"down_proj[{plant.layer}][{plant.dim}, {plant.neuron}]" in repr(o)


def test_parts_sum_to_the_residual_value(tiny_llama, tiny_origin):
    o = tiny_origin
    assert list(o.components.columns) == ["component", "layer", "head", "contribution"]
    _assert_exact(tiny_llama, o)
    heads = o.components[o.components.component == "head"]
    assert len(heads) == (o.layer + 1) * tiny_llama.cfg.n_heads  # every query head of a GQA model
    assert o.by_layer().total.iloc[-1] == pytest.approx(o.value, rel=1e-6)


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_every_family_traced_exactly(family):
    """LayerNorm + biases (gpt2), parallel attention/MLP (gpt_neox), post-sublayer norms (gemma3), GQA."""
    model = tiny_model(family)
    plant = planted(model)
    o = trace_origin(model, "hello world", ablate=False)
    assert (o.layer, o.pos, o.dim, o.writer_layer) == (plant.layer, 0, plant.dim, plant.layer)
    assert (o.super_weight.layer, o.super_weight.row, o.super_weight.col) == (plant.layer, plant.dim, plant.neuron)
    _assert_exact(model, o)


def test_causal_check_on_plant(tiny_origin):
    c, base, _, top, randoms = _causal(tiny_origin, k=3)
    assert list(tiny_origin.causal.columns) == ["ablation", "massive_value", "loss"]
    assert abs(top.massive_value) < 1e-3 * base
    assert abs(c.filter(like="zero super weight", axis=0).massive_value.iloc[0]) < 1e-3 * base
    assert len(randoms) == 2 and (randoms.massive_value - base).abs().max() < 1e-3 * base
    assert len(tiny_origin.search) == 1  # nothing massive left after the first weight: the search stops


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_batched_causal_check_equals_one_pass_per_variant(family, monkeypatch):
    """One batched pass (weights dropped through the down projection's output hook, before Gemma's ln2_post)
    gives the table of one forward per variant with the weights really zeroed and the model's own loss."""
    model = tiny_model(family)
    plant = planted(model)
    kw = dict(layer=plant.layer + 1, pos=0, dim=plant.dim, ablate="both", n_random=2, search_steps=3,
              threshold=0.0)  # threshold 0: the search goes on until it finds no new weight
    fast = trace_origin(model, "hello world", **kw)
    monkeypatch.setattr("mi_massive.origin.causal_table", reference_causal_table)
    slow = trace_origin(model, "hello world", **kw)
    assert len(fast.search) >= 2 and len(fast.causal) == 1 + 2 + 2 + len(fast.search)
    assert fast.causal.ablation.tolist() == slow.causal.ablation.tolist()
    assert fast.search[["layer", "row", "col"]].equals(slow.search[["layer", "row", "col"]])
    for a, b in ((fast.causal, slow.causal), (fast.search, slow.search)):
        assert a.massive_value.to_numpy() == pytest.approx(b.massive_value.to_numpy(), rel=1e-5, abs=1e-4)
        assert a.loss.to_numpy() == pytest.approx(b.loss.to_numpy(), rel=1e-5, abs=1e-5)
    assert _no_hooks_left(model)


def test_forward_calls(tiny_llama):
    """Default call: the capture pass, then one batched pass of the 5 ablation rows (top-5 zeroed, 3 random
    draws, super weight) resumed from the clean residual at the writer. The search's first step needs no pass:
    the super weight sits in the target's own block, so zeroing it changes only that block's MLP output at
    one dim, known from the capture; the plant is gone after it, so the search stops. With threshold 0 the
    search goes on to weights in earlier blocks, each a short pass (`probe`, from that block to the target);
    the rows of those weight sets start before the writer, so they run alone (a short pass up to the writer)
    until the other rows join them there."""
    plant = planted(tiny_llama)
    with _count_forwards(tiny_llama) as rows:
        trace_origin(tiny_llama, "hello world")
    assert rows == [1, 5]
    with _count_forwards(tiny_llama) as rows:
        o = trace_origin(tiny_llama, "hello world", layer=plant.layer, pos=0, dim=plant.dim, threshold=0.0)
    assert len(o.search) == 3 and o.search.layer.iloc[1] < plant.layer  # the next writer is an earlier block
    assert set(o.search.layer.iloc[1:]) == {0} and plant.layer == 1
    assert rows == [1, 1, 2, 7]  # capture, step 2's short pass, the 2 rows with a weight in block 0 (block 0
    # only), then all 7 rows from block 1
    with _count_forwards(tiny_llama) as rows:
        trace_origin(tiny_llama, "hello world", ablate=False)
    assert rows == [1]


def test_rows_skip_the_blocks_before_the_ablation(tiny_llama):
    """The batched pass and the search passes never run the blocks before the writer; the search passes do
    not run the blocks after the target."""
    plant = planted(tiny_llama)
    ran = []
    handles = [tiny_llama.blocks[l].mlp.register_forward_hook(lambda m, a, o, l=l: ran.append((l, o.shape[0])))
               for l in range(tiny_llama.cfg.n_layers)]
    try:
        trace_origin(tiny_llama, "hello world")  # the plant's site: its writer is its own block
    finally:
        for h in handles:
            h.remove()
    n = tiny_llama.cfg.n_layers
    capture_pass = [(l, 1) for l in range(n)]
    assert ran[:n] == capture_pass
    probes, batched = ran[n:-(n - plant.layer)], ran[-(n - plant.layer):]
    assert batched == [(l, 5) for l in range(plant.layer, n)]
    assert probes == []  # the search's step needs no pass (the super weight is in the target's block)


def test_weights_restored_and_hooks_removed(tiny_llama):
    before = _weights(tiny_llama)
    trace_origin(tiny_llama, "hello world", ablate="both", n_random=1, search_steps=2)
    assert _same_weights(tiny_llama, before) and _no_hooks_left(tiny_llama)
    with pytest.raises(RuntimeError, match="boom"), zeroed_weights(tiny_llama, [(1, 5, 7), (2, 0, 3)]):
        assert float(tiny_llama.blocks[1].mlp.W_out[7, 5]) == 0.0
        raise RuntimeError("boom")
    assert _same_weights(tiny_llama, before)

    def fail(x, hook_point):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_with_hooks(tiny_llama, tiny_llama.to_tokens("hi"), [neuron_hook(1, [7]), (hook.mlp_out(1), fail)])
    assert _no_hooks_left(tiny_llama) and _same_weights(tiny_llama, before)


def test_from_cache_without_forward_pass(tiny_llama, tiny_origin, monkeypatch):
    tokens = tiny_origin.tokens
    with torch.no_grad():
        _, cache = tiny_llama.run_with_cache(tokens[None])

    def no_run(*a, **k):
        raise AssertionError("a forward pass ran")

    monkeypatch.setattr("mi_massive.origin.capture", no_run)
    monkeypatch.setattr(tiny_llama, "forward", no_run)
    o = trace_origin(tiny_llama, tokens, cache=cache, ablate=False)
    assert (o.layer, o.pos, o.dim, o.writer_layer) == (tiny_origin.layer, 0, tiny_origin.dim, tiny_origin.writer_layer)
    assert o.components.contribution.to_numpy() == pytest.approx(tiny_origin.components.contribution.to_numpy(),
                                                                 rel=1e-5, abs=1e-6)
    assert o.super_weight == tiny_origin.super_weight and o.causal.empty


def test_chosen_site_and_dataframe(tiny_llama):
    o = trace_origin(tiny_llama, "hello world", layer=3, pos=2, dim=10, ablate=False)
    assert (o.layer, o.pos, o.dim) == (3, 2, 10) and o.found  # an explicit site is traced, massive or not
    assert o.components.contribution.sum() == pytest.approx(o.value, rel=1e-5, abs=1e-5)
    assert o.to_dataframe() is o.components and o.causal.empty
    later = trace_origin(tiny_llama, "hello world", layer=3, ablate=False)  # the plant at a later layer
    assert (later.dim, later.writer_layer) == (planted(tiny_llama).dim, planted(tiny_llama).layer)


def test_empty_result(tiny_random, tiny_llama):
    o = trace_origin(tiny_random, "hello world")
    assert not o.found and o.writer_layer is None and o.super_weight is None
    assert o.components.empty and o.neurons.empty and o.causal.empty and o.by_layer().empty and o.writers() == []
    assert "no massive activation" in repr(o)
    assert not trace_origin(tiny_llama, "hello world", dim=6).found  # nothing massive in that dimension


@pytest.mark.parametrize("kw, match", [
    ({"layer": 4}, r"layer 4 out of range: valid layers are 0..3"),
    ({"pos": 50}, r"position 50 out of range: valid positions are 0..11"),
    ({"dim": 64}, r"dim 64 out of range: valid dims are 0..63"),
    ({"top_k": 0}, r"top_k must be an int in 1..128"),
    ({"ablate": "shuffle"}, "ablate must be"),
    ({"search_steps": 0}, "search_steps must be"),
    ({"threshold": -1.0}, "non-negative"),
])
def test_bad_arguments(tiny_llama, kw, match):
    with pytest.raises(ValueError, match=match):
        trace_origin(tiny_llama, "hello world", **kw)


def test_bad_inputs_and_cache(tiny_llama):
    with pytest.raises(ValueError, match="traces one prompt; got 2"):
        trace_origin(tiny_llama, ["hello", "world"])
    with pytest.raises(ValueError, match="empty"):
        trace_origin(tiny_llama, "")
    with pytest.raises(ValueError, match="cache lacks"):
        trace_origin(tiny_llama, "hello", cache={})
    with torch.no_grad():
        _, cache = tiny_llama.run_with_cache(tiny_llama.to_tokens("hello there"))
    with pytest.raises(ValueError, match="cache has 12 positions but the prompt has 6"):
        trace_origin(tiny_llama, "hello", cache=cache)


def test_save_load_and_cli(tiny_origin, tmp_path, capsys, monkeypatch):
    tiny_origin.save(tmp_path / "o.pt")
    back = Origin.load(tmp_path / "o.pt")
    assert repr(back) == repr(tiny_origin) and back.neurons.equals(tiny_origin.neurons)
    from mi_massive import cli

    monkeypatch.setattr(cli, "load_from_args", lambda args: tiny_model("llama"))
    assert cli.main(["trace", "tiny", "--prompt", "hello world", "--no-ablate"]) == 0
    out = capsys.readouterr().out
    assert "down_proj[1][5, 7]" in out and "top neurons of block 1" in out


# --- real models ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_origin(smollm2):
    with _count_forwards(smollm2) as rows:
        o = trace_origin(smollm2, PROMPT, prepend_bos=True)  # the BOS setting these numbers were measured in
    assert rows == [1, 1, 7]  # capture; no probe (steps 1-2's weights are in block 11); the search's last row
    # alone through blocks 2-10 (its third weight is in block 2); the 7 rows from block 11
    return o


@pytest.mark.real
def test_smollm2_origin(smollm2, smollm2_origin):
    o = smollm2_origin
    assert (o.layer, o.pos, o.dim) == (11, 0, 507) and o.value == pytest.approx(24926, rel=1e-3)
    _assert_exact(smollm2, o)
    assert o.writer_layer == 11 and o.writers() == [11]
    assert o.by_layer().total[10] == pytest.approx(28.7, abs=1)  # the jump: ~29 -> ~24,900 in block 11
    # two neurons write it: 1229 (72%) and 1487 (27%); the super weight is the 2nd largest |w| of down_proj 11
    assert o.neurons.neuron.iloc[:2].tolist() == [1229, 1487]
    assert o.neurons.share.iloc[0] == pytest.approx(0.724, abs=0.01) and o.neurons.cum_share.iloc[1] > 0.99
    sw = o.super_weight
    assert (sw.layer, sw.row, sw.col, sw.rank) == (11, 507, 1229, 2) and sw.value == pytest.approx(5.876, abs=1e-3)
    c, base, loss0, top, randoms = _causal(o)
    assert top.massive_value < 0.01 * base and top.loss > loss0 + 4  # 24,926 -> 102; loss 3.59 -> 8.32
    assert (randoms.massive_value / base - 1).abs().max() < 1e-3 and (randoms.loss - loss0).abs().max() < 0.05
    assert c.filter(like="zero super weight", axis=0).loss.iloc[0] > loss0 + 3  # one weight: 3.59 -> 7.09
    assert o.search[["layer", "col"]].values[:2].tolist() == [[11, 1229], [11, 1487]]  # then the second neuron
    assert o.search.massive_value.iloc[1] < 0.01 * base


@pytest.fixture(scope="module")
def gemma3_origin(gemma3):
    return trace_origin(gemma3, PROMPT)


@pytest.mark.real
def test_gemma3_origin_through_post_norms(gemma3, gemma3_origin):
    o = gemma3_origin
    assert (o.layer, o.pos, o.dim) == (3, 0, 163) and o.value == pytest.approx(10428, rel=1e-3)
    assert "post-sublayer norm" in o.note
    _assert_exact(gemma3, o)  # through the frozen ln1_post / ln2_post scales, parts sum to what was added
    assert o.writer_layer == 3 and o.by_layer().total[2] < 100  # ~91 -> ~10,400 in block 3
    assert int(o.neurons.neuron.iloc[0]) == 1414 and o.neurons.share.iloc[0] == pytest.approx(0.973, abs=0.01)
    sw = o.super_weight
    assert (sw.layer, sw.row, sw.col) == (3, 163, 1414) and sw.value == pytest.approx(-0.1215, abs=1e-3)
    c, base, loss0, top, randoms = _causal(o)
    assert top.massive_value < 0.15 * base and top.loss > loss0 + 1  # 10,428 -> 1,366; loss 2.69 -> 3.93
    assert (randoms.massive_value / base - 1).abs().max() < 2e-3 and (randoms.loss - loss0).abs().max() < 0.05
    # the super weight alone removes 96% at layer 3, but later blocks keep writing dim 163: the loss barely moves
    sw_row = c.filter(like="zero super weight", axis=0).iloc[0]
    assert sw_row.massive_value < 0.05 * base and abs(sw_row.loss - loss0) < 0.1
    # where it peaks (layer 14, ~1.04e5) six blocks each add 10-17%, each through one neuron
    late = trace_origin(gemma3, PROMPT, layer=14, pos=0, dim=163, ablate=False)
    assert late.value == pytest.approx(103795, rel=1e-3) and late.writer_layer == 5
    assert late.components.contribution.sum() == pytest.approx(late.value, rel=1e-6)
    assert set(late.writers(0.09)) == {3, 4, 5, 6, 7, 8} and late.neurons.share.iloc[0] > 0.98


# --- one writer or built up: what the result and its picture say ----------------------------------------------

def test_planted_value_has_one_writer_and_a_super_weight(tiny_llama, tiny_origin):
    o, plant = tiny_origin, planted(tiny_llama)
    assert o.mechanism == "super weight" and not o.built_up and o.builders == (plant.layer,)
    assert o.super_weight.is_outlier and o.writer_share > 0.99
    fig = o.show().figure
    assert "super weight down_proj" in fig.layout.title.text and "built up" not in fig.layout.title.text


def test_built_up_value_names_its_blocks_not_a_super_weight(tiny_llama):
    """A residual entry no block writes most of (found by search on the tiny model): the result says it is built up,
    names the fewest blocks adding 80% of what the blocks add, and neither its sentence nor its picture calls a weight super."""
    for dim in range(tiny_llama.cfg.d_model):
        o = trace_origin(tiny_llama, "hello world", layer=3, pos=5, dim=dim, ablate=False)
        if o.built_up and o.value and abs(o.value) > 0.05:
            break
    else:
        pytest.fail("no built-up entry at layer 3, pos 5 of the tiny model")
    assert o.mechanism == "built up" and o.writer_share < 0.5 and len(o.builders) >= 2
    parts = o.by_layer().set_index("layer").pipe(lambda d: (d.attn + d.mlp) / o.value)
    assert parts[list(o.builders)].sum() >= 0.8 * parts[parts > 0].sum()
    assert o.writer_layer in o.builders
    assert "built up over blocks" in repr(o) and "through super weight" not in repr(o)
    title = o.show().figure.layout.title.text
    assert "built up over blocks" in title and "no super weight" in title
    assert o.show().meta == {"mechanism": "built up", "builders": list(o.builders)}


@pytest.mark.real
def test_smollm2_one_block_writes_dim_507(smollm2_origin):
    o = smollm2_origin
    assert o.mechanism == "super weight" and o.builders == (11,) and not o.built_up
    assert "through super weight down_proj[11][507, 1229]" in repr(o)


@pytest.mark.real
def test_gemma3_value_is_no_super_weight(gemma3, gemma3_origin):
    """gemma3-270m: block 3 writes dim 163 (99%), but the down_proj entry of its top neuron is |w| rank 212 (-0.12):
    the size comes from the post-MLP norm's gain on dim 163 (585, its largest); the value then keeps growing and at
    its peak (layer 14) is built up over blocks 3-8."""
    o = gemma3_origin
    assert o.mechanism == "post-norm gain" and not o.super_weight.is_outlier and o.super_weight.rank > 100
    gain, rank, d = o.norm_gain
    assert gain == pytest.approx(585, rel=0.01) and rank == 1 and d == 640  # stored as 584 + 1 (Gemma's offset)
    assert o.builders == (3,) and o.peak_layer == 14 and set(o.peak_builders) >= {3, 4, 5, 6, 7}
    text = repr(o)
    assert "no super weight" in text and "through super weight" not in text and "post-MLP norm's gain 585" in text
    assert "built up over blocks" in text  # the peak
    title = o.show().figure.layout.title.text
    assert "no super weight" in title and "orange" not in " ".join(a.text for a in o.show().figure.layout.annotations)
