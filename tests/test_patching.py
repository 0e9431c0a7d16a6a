"""Path patching: batched runs equal the naive loop, effects add up, bad inputs fail loudly, hooks come off."""

import math
from collections import Counter

import pytest
import torch

from mi_massive import PathPatching, find_massive_activations, path_patch
from mi_massive.testing import ModelState, planted

PROMPTS = ["hello world", "quick fox"]  # two lengths: two prompt batches


def _logit_of_next(logits, tokens):  # a custom metric: mean logit of the true next token
    return logits[0, :-1].gather(-1, tokens[0, 1:, None]).mean()


@pytest.fixture(scope="module")
def tiny_pp(tiny_llama):
    return path_patch(tiny_llama, PROMPTS, batch_size=5)


# --- tiny planted model ---------------------------------------------------------------------------------------

def test_batched_equals_naive_loop(tiny_llama, tiny_pp):
    slow = path_patch(tiny_llama, PROMPTS, method="naive")
    assert tiny_pp.path == slow.path and tiny_pp.joint_path == slow.joint_path
    torch.testing.assert_close(tiny_pp.metric, slow.metric, atol=1e-5, rtol=0)
    torch.testing.assert_close(tiny_pp.joint_metric, slow.joint_metric, atol=1e-5, rtol=0)
    assert tiny_pp.clean_metric == pytest.approx(slow.clean_metric, abs=1e-6)
    n_variants = len(slow.path) + len(slow.joint_path)
    # the massive token is the first: a query there meets only its own key, so query-only variants (each q
    # receiver and the joint "q") cannot change anything and the batched run does not run them
    n_q = slow.path.count("q") + 1
    q = torch.tensor([p == "q" for p in tiny_pp.path])
    assert (tiny_pp.metric[q] == tiny_pp.clean_metric).all() and (slow.metric[q] - slow.clean_metric).abs().max() < 1e-5
    assert tiny_pp.forward_rows == slow.forward_rows - 2 * n_q  # the batched rows resume after the sender...
    assert tiny_pp.forward_calls < slow.forward_calls / 3  # ...in far fewer passes
    # two prompt lengths = two batches: 2 detection passes, 2 clean/corrupted passes (2 rows each), then
    # one pass per (variant, prompt) in the naive loop; batched on the CPU, per prompt, ceil(variants / 5) passes
    # for the variants of each first receiver block (the joints k, v, k+v and all start at the first block
    # after the sender, the joint direct at the end)
    assert slow.forward_calls == 2 + 2 + 2 * n_variants and slow.forward_rows == 2 + 4 + 2 * n_variants
    n = tiny_llama.cfg.n_layers
    firsts = Counter(int(l) for l, p in zip(tiny_pp.layer, tiny_pp.path) if p != "q")
    firsts[tiny_pp.sender_layer + 1] += 4
    firsts[n] += 1
    assert sum(firsts.values()) == n_variants - n_q
    if next(tiny_llama.parameters()).is_cuda:  # on a GPU passes are as full as batch_size allows
        firsts = Counter({0: n_variants - n_q})
    assert tiny_pp.forward_calls == 2 + 2 + 2 * sum(math.ceil(c / 5) for c in firsts.values())


def test_batched_equals_naive_custom_metric(tiny_llama):
    kw = dict(metric=_logit_of_next, receivers=("v", "q", "direct"), layers=[2])
    fast = path_patch(tiny_llama, PROMPTS[1:], batch_size=4, **kw)
    slow = path_patch(tiny_llama, PROMPTS[1:], method="naive", **kw)
    torch.testing.assert_close(fast.metric, slow.metric, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.joint_metric, slow.joint_metric, atol=1e-5, rtol=0)
    assert fast.metric_name == "_logit_of_next" and fast.joint_path == ("v", "q", "direct", "all")


def test_rows_and_dataframe(tiny_llama, tiny_pp):
    cfg = tiny_llama.cfg
    layers = range(planted(tiny_llama).layer + 1, cfg.n_layers)  # blocks after the writer
    assert tiny_pp.sender_layer == planted(tiny_llama).layer
    df = tiny_pp.to_dataframe()
    assert list(df.columns) == ["layer", "head", "path", "metric", "effect", "query_heads"]
    n_kv = cfg.n_key_value_heads
    assert len(df) == len(layers) * (2 * n_kv + cfg.n_heads) + 1
    assert set(df[df.path == "k"].layer) == set(layers)
    assert df[(df.path == "v") & (df["head"] == 1)].query_heads.iloc[0] == (2, 3)  # 4 query heads on 2 KV heads
    assert df[df.path == "direct"].layer.tolist() == [cfg.n_layers]
    assert tiny_pp.positions == ((0,),) * len(PROMPTS)
    assert tiny_pp.joint_path == ("k", "v", "q", "direct", "k+v", "all")


def test_effects_add_up(tiny_pp):
    s = tiny_pp.summary().set_index("path")
    assert abs(tiny_pp.total_effect) > 1e-3
    # every path at once reproduces the fully corrupted run exactly: nothing else reads the massive token
    assert s.effect["all"] == pytest.approx(tiny_pp.total_effect, abs=1e-5)
    assert s.share["all"] == pytest.approx(1.0, abs=1e-3)
    df = tiny_pp.to_dataframe()
    # the massive token is BOS: its query meets a single key, so queries carry nothing
    assert (df[df.path == "q"].effect == 0).all() and s.effect["q"] == 0
    # single-receiver direct row equals the direct joint row
    assert df[df.path == "direct"].effect.iloc[0] == pytest.approx(s.effect["direct"], abs=1e-6)
    assert s.sum_of_parts["k+v"] == pytest.approx(s.effect["k"] + s.effect["v"], abs=1e-6)
    assert "zeroing the massive activation (dim(s) 5 from block 1)" in repr(tiny_pp)


def test_identity_corruption_has_no_effect(tiny_llama):
    pp = path_patch(tiny_llama, PROMPTS[:2], corruption=lambda v: v, receivers=("k", "v", "direct"))
    assert pp.total_effect == 0 and (pp.effect == 0).all() and (pp.joint_metric == pp.clean_metric).all()


def test_neuron_and_super_weight_senders(tiny_llama, tiny_pp):
    plant = planted(tiny_llama)
    w = tiny_llama.blocks[plant.layer].mlp.W_out
    before = w.clone()
    neuron = path_patch(tiny_llama, PROMPTS, senders=("neuron", plant.layer, plant.neuron))
    sw = path_patch(tiny_llama, PROMPTS, senders=("super_weight", plant.layer, plant.neuron, plant.dim))
    assert torch.equal(w, before)  # the weight is restored
    assert "super weight W_out[7, 5] of block 1" in sw.sender and "neuron 7 of block 1" in neuron.sender
    # the neuron writes only through the super weight: both senders remove the same thing
    assert neuron.total_effect == pytest.approx(sw.total_effect, abs=1e-6)
    # and nearly all of it is the massive activation (the plant writes ~0 elsewhere)
    assert sw.total_effect == pytest.approx(tiny_pp.total_effect, rel=0.05)
    assert sw.summary().set_index("path").share["all"] == pytest.approx(1.0, abs=0.05)


def test_receivers_layers_and_reused_detection(tiny_llama, tiny_pp):
    found = find_massive_activations(tiny_llama, PROMPTS)
    pp = path_patch(tiny_llama, PROMPTS, receivers=("v",), layers=[3], massive=found, batch_size=5)
    assert pp.path == ("v", "v") and pp.joint_path == ("v",)
    assert pp.hook_names == ("blocks.{layer}.attn.hook_v",)
    full = tiny_pp.to_dataframe()
    torch.testing.assert_close(pp.metric, torch.tensor(full[(full.path == "v") & (full.layer == 3)].metric.values))
    assert pp.forward_rows == 2 * len(PROMPTS) + 3 * len(PROMPTS)  # clean + corrupted, 2 heads + joint, no detection
    assert pp.forward_calls == 2 + 2  # per prompt length: the clean/corrupted pair, the patched rows


@pytest.mark.parametrize("kwargs, match", [
    (dict(corruption="half"), "corruption must be"),
    (dict(corruption=float("nan")), "corruption must be"),
    (dict(receivers=("k", "o")), "receivers must be"),
    (dict(receivers=()), "receivers must be"),
    (dict(metric="accuracy"), "metric must be"),
    (dict(method="fast"), "method must be"),
    (dict(batch_size=0), "batch_size must be"),
    (dict(layers=[1]), r"not after the sender's block 1: receiver layers are 2..3"),
    (dict(layers=[9]), r"layer 9 out of range: valid layers are 0..3"),
    (dict(senders=("neuron", 1, 500)), r"neuron 500 out of range: valid neurons are 0..127"),
    (dict(senders=("super_weight", 1, 7)), "senders must be"),
    (dict(senders="bos"), "senders must be"),
    (dict(threshold=-1), "threshold must be"),
])
def test_bad_inputs(tiny_llama, kwargs, match):
    with pytest.raises(ValueError, match=match):
        path_patch(tiny_llama, "hello", **kwargs)


def test_no_massive_activation_or_wrong_detection(tiny_llama, tiny_random):
    with pytest.raises(ValueError, match="no massive activations"):
        path_patch(tiny_random, "hello world")
    with pytest.raises(ValueError, match="found on other prompts"):
        path_patch(tiny_llama, "hello", massive=find_massive_activations(tiny_llama, "world"))
    with pytest.raises(ValueError, match="empty"):
        path_patch(tiny_llama, [])


def test_hooks_removed_and_weight_restored_on_error(tiny_llama):
    state = ModelState.of(tiny_llama)
    path_patch(tiny_llama, "hello", receivers=("k", "direct"))
    state.check(tiny_llama)

    def broken_metric(logits, tokens):  # fails in the first patched pass (after clean and corrupted)
        broken_metric.calls += 1
        if broken_metric.calls > 2:
            raise RuntimeError("metric failed")
        return logits.mean()

    broken_metric.calls = 0
    with pytest.raises(RuntimeError, match="metric failed"):
        path_patch(tiny_llama, "hello", metric=broken_metric)
    state.check(tiny_llama)

    def broken_corruption(values):  # fails inside the corrupted forward pass
        raise RuntimeError("corruption failed")

    with pytest.raises(RuntimeError, match="corruption failed"):
        path_patch(tiny_llama, "hello", corruption=broken_corruption)
    state.check(tiny_llama)

    plant = planted(tiny_llama)  # a super-weight sender fails mid-run: no weight is left changed
    w = tiny_llama.blocks[plant.layer].mlp.W_out
    before = w.clone()
    broken_metric.calls = 0
    with pytest.raises(RuntimeError, match="metric failed"):
        path_patch(tiny_llama, "hello", metric=broken_metric,
                   senders=("super_weight", plant.layer, plant.neuron, plant.dim))
    assert torch.equal(w, before)
    state.check(tiny_llama)


def test_save_load_and_cli_parser(tiny_pp, tmp_path):
    tiny_pp.save(tmp_path / "pp.pt")
    back = PathPatching.load(tmp_path / "pp.pt")
    assert back.to_dataframe().equals(tiny_pp.to_dataframe()) and repr(back) == repr(tiny_pp)
    from mi_massive.cli import build_parser

    args = build_parser().parse_args(["patch", "--paths", "k", "v", "--layers", "12", "13", "--corruption", "0.5"])
    assert args.paths == ["k", "v"] and args.layers == [12, 13] and args.func.__name__ == "_patch_cli"
    assert not math.isnan(tiny_pp.summary().share.iloc[0])


# --- smollm2-135m -------------------------------------------------------------------------------------------

@pytest.mark.real
def test_smollm2_paths_of_the_massive_activation(smollm2):
    """Zeroing dim 507 at BOS from block 11: measured total +9.65 nats (5.81 -> 15.46); V alone 41%, K alone 6%,
    Q 0, direct 16%, K+V jointly 82% (their singles sum to 47%); the largest single receiver is the direct path
    (+1.58), then the values of KV head 2 in layer 24 (+0.74) and KV head 1 in layer 21 (+0.72)."""
    pp = path_patch(smollm2, "Summer is warm. Winter is cold.", batch_size=64, prepend_bos=True)  # (measured so)
    assert pp.sender_layer == 11 and pp.positions == ((0,),) and "dim(s) 507" in pp.sender
    # one pass of clean + corrupted rows (detection rides on the clean row), then 271 receivers + 6 joints
    # less the 162 queries and the joint "q" (BOS's query meets only its own key: exactly no effect), on the
    # CPU in one pass per receiver block (12..29, and the direct path's), on a GPU in 2 passes of 64 rows
    assert pp.forward_calls == 1 + (2 if next(smollm2.parameters()).is_cuda else 19)
    assert pp.forward_rows == 2 + 277 - 163
    assert pp.clean_metric == pytest.approx(5.81, abs=0.1) and pp.total_effect > 8  # the model breaks
    s = pp.summary().set_index("path")
    assert s.effect["all"] == pytest.approx(pp.total_effect, abs=1e-3)  # every path together = full corruption
    assert s.effect["q"] == 0  # BOS's query meets only its own key
    assert 0.3 < s.share["v"] < 0.55 and s.share["k"] < 0.15 and 0.1 < s.share["direct"] < 0.25
    assert s.effect["v"] > 5 * s.effect["k"]  # the values (the implicit bias) carry far more than the keys
    assert s.share["k+v"] > 0.7 and s.effect["k+v"] > 1.5 * s.sum_of_parts["k+v"]  # K and V interact
    assert s.sum_of_parts["v"] > 1.5 * s.effect["v"]  # single V heads overlap: their sum exceeds the joint effect
    df = pp.to_dataframe()
    assert df.loc[df.effect.idxmax()].path == "direct"
    top_v = df[df.path == "v"].sort_values("effect").iloc[-1]
    assert (top_v.layer, top_v["head"]) in {(24, 2), (21, 1)} and 0.6 < top_v.effect < 0.9
    assert df[df.path == "k"].effect.abs().max() < 0.3  # no single key carries much


def test_sentence_names_the_largest_head(tiny_pp):
    text = tiny_pp.sentence()
    assert "bound method" not in text and "largest single receiver" in text


def test_patched_rows_skip_the_blocks_before_their_receivers(tiny_llama):
    """After the clean/corrupted pass, no pass runs a block at or before the sender's, and passes of later
    receivers start later (rows are taken in order of their receiver's block)."""
    ran = []
    handles = [tiny_llama.blocks[l].mlp.register_forward_hook(lambda m, a, o, l=l: ran.append((l, o.shape[0])))
               for l in range(tiny_llama.cfg.n_layers)]
    try:
        pp = path_patch(tiny_llama, "hello world", batch_size=4)
    finally:
        for h in handles:
            h.remove()
    n, sender = tiny_llama.cfg.n_layers, pp.sender_layer
    assert ran[:n] == [(l, 2) for l in range(n)]  # clean + corrupted rows in one pass, detection riding along
    patched = ran[n:]
    assert min(l for l, _ in patched) == sender + 1
    starts = [l for i, (l, _) in enumerate(patched) if i == 0 or l <= patched[i - 1][0]]  # first block of each pass
    assert starts == sorted(starts, reverse=True) and starts[0] == n - 1 and len(starts) == pp.forward_calls - 1
    assert pp.block_rows == sum(rows for _, rows in ran)  # the arithmetic accounted is the arithmetic done
    firsts = [rows for i, (l, rows) in enumerate(patched) if i == 0 or l <= patched[i - 1][0]]  # rows of each pass
    assert pp.logit_rows == pp.forward_rows == ran[0][1] + sum(firsts)
