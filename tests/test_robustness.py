"""Bad inputs across the public API (each a clear error or a correct empty result), hook hygiene, determinism.

The table below is the contract: every case names the call and either the error message it must raise or
the check its (empty or partial) result must pass. Models are left as they were found after every case.
"""

import math
import warnings

import pytest
import torch

import mi_massive
from mi_massive import (attention_sinks, find_massive_activations, implicit_bias, layer_profile, load_model,
                        path_patch, swap_implicit_bias)
from mi_massive.interventions import build_intervention, intervene
from mi_massive.origin import trace_origin
from mi_massive.perplexity import perplexity
from mi_massive.testing import ModelState, Plant, planted, tiny_hf_model, tiny_model

P = ["hello world, this is a test", "abc def"]  # different lengths on purpose


@pytest.fixture(scope="module")
def m():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def r():
    return tiny_model("llama", plant=False)


@pytest.fixture(scope="module")
def iv(m):
    return build_intervention(m, P, mode="zero")


@pytest.fixture(scope="module")
def bias(m):
    return implicit_bias(m, P, swap=False)


def _unsupported_family():
    import transformers

    from mi_massive.testing import char_tokenizer

    config = transformers.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=2,
                                    vocab_size=128, max_position_embeddings=64, word_embed_proj_dim=32)
    return load_model(transformers.AutoModelForCausalLM.from_config(config), tokenizer=char_tokenizer())


# (case id, call(m, r, iv, bias), message the ValueError must match)
ERRORS = [
    ("empty string", lambda m, r, iv, b: find_massive_activations(m, ""), "empty"),
    ("empty list", lambda m, r, iv, b: find_massive_activations(m, []), "empty list"),
    ("over-long prompt", lambda m, r, iv, b: find_massive_activations(m, "a" * 300), "context is 256"),
    ("over-long token tensor", lambda m, r, iv, b: layer_profile(m, torch.ones(1, 300, dtype=torch.long)),
     "context is 256"),
    ("token id beyond vocab", lambda m, r, iv, b: find_massive_activations(m, torch.tensor([[1, 500]])),
     r"token ids must lie in 0\.\.127"),
    ("3-D token tensor", lambda m, r, iv, b: find_massive_activations(m, torch.ones(1, 2, 3, dtype=torch.long)),
     "shape"),
    ("not a model", lambda m, r, iv, b: find_massive_activations("gpt2", "hi"), "TransformerBridge"),
    ("unwrapped HF model", lambda m, r, iv, b: trace_origin(m.original_model, "hi"), "TransformerBridge"),
    ("negative threshold", lambda m, r, iv, b: find_massive_activations(m, "hi", threshold=-1.0), "non-negative"),
    ("batch_size 0", lambda m, r, iv, b: find_massive_activations(m, P, batch_size=0), "batch_size"),
    ("layer out of range", lambda m, r, iv, b: trace_origin(m, P[0], layer=4),
     r"layer 4 out of range: valid layers are 0\.\.3"),
    ("pos out of range", lambda m, r, iv, b: trace_origin(m, P[0], pos=99), r"valid positions are 0\.\.27"),
    ("dim out of range", lambda m, r, iv, b: trace_origin(m, P[0], dim=64), r"valid dims are 0\.\.63"),
    ("float layer", lambda m, r, iv, b: trace_origin(m, P[0], layer=1.5), "layer must be an int"),
    ("two prompts to trace", lambda m, r, iv, b: trace_origin(m, P), "one prompt"),
    ("top_k 0", lambda m, r, iv, b: trace_origin(m, P[0], top_k=0), r"top_k must be an int in 1\.\.128"),
    ("head out of range", lambda m, r, iv, b: mi_massive.attention_patterns(m, P[0], 1).show(heads=[4]),
     r"head 4 out of range: valid heads are 0\.\.3"),
    ("epsilon above 1", lambda m, r, iv, b: attention_sinks(m, P, epsilon=2.0), "epsilon"),
    ("sink position past the prompt", lambda m, r, iv, b: attention_sinks(m, P, sink_positions=[50]),
     "out of range"),
    ("bias layer out of range", lambda m, r, iv, b: implicit_bias(m, P, layers=[4]), "layer 4 out of range"),
    ("sinks without massive activations", lambda m, r, iv, b: implicit_bias(r, P), "pass sink_positions"),
    ("bad swap mode", lambda m, r, iv, b: swap_implicit_bias(m, b, mode="bogus").__enter__(), "mode"),
    ("negative sink position in a swap", lambda m, r, iv, b: swap_implicit_bias(m, b, sink_positions=[-1]).__enter__(),
     "non-negative"),
    ("bad receiver", lambda m, r, iv, b: path_patch(m, P, receivers=("x",)), "receivers"),
    ("patching without massive activations", lambda m, r, iv, b: path_patch(r, P), "nothing to path-patch"),
    ("sender layer out of range", lambda m, r, iv, b: path_patch(m, P, senders=("neuron", 9, 0)),
     "layer 9 out of range"),
    ("receiver before the sender", lambda m, r, iv, b: path_patch(m, P, layers=[0]), "not after the sender"),
    ("NaN corruption", lambda m, r, iv, b: path_patch(m, P, corruption=float("nan")), "finite number"),
    ("bad intervention mode", lambda m, r, iv, b: build_intervention(m, P, mode="bogus"), "mode must be one of"),
    ("intervention dim out of range", lambda m, r, iv, b: build_intervention(m, P, dims=[99]),
     "dim 99 out of range"),
    ("intervention without massive dims", lambda m, r, iv, b: build_intervention(r, P), "no massive dims"),
    ("intervention on another model", lambda m, r, iv, b: intervene(r, iv).__enter__(), "built for tiny-llama"),
    ("unknown tiny family", lambda m, r, iv, b: tiny_model("opt"), "no tiny config"),
    ("plant outside the model", lambda m, r, iv, b: tiny_model("llama", plant=Plant(1, 7, 99, 1e3)),
     r"plant dim 99 out of range: valid dims are 0\.\.63"),
    ("unknown model name", lambda m, r, iv, b: load_model("no-such-model"), "unknown model name"),
    ("unsupported family", lambda m, r, iv, b: _unsupported_family(), "unsupported model family 'opt'"),
]


@pytest.mark.parametrize("call, match", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_bad_input_raises_a_clear_error(m, r, iv, bias, call, match):
    before = ModelState.of(m), ModelState.of(r)
    with pytest.raises((ValueError, TypeError), match=match):
        call(m, r, iv, bias)
    before[0].check(m)
    before[1].check(r)


def _same_as_separate(acts, model):
    per = [find_massive_activations(model, p).to_dataframe().drop(columns="prompt") for p in P]
    df = acts.to_dataframe()
    return all(df[df.prompt == i].drop(columns="prompt").reset_index(drop=True).equals(per[i]) for i in range(len(P)))


# (case id, call(m, r), check(result, m)): a correct empty or partial result
RESULTS = [
    ("random model: no massive activation", lambda m, r: find_massive_activations(r, P),
     lambda res, m: len(res) == 0 and res.sites().empty and "no massive" in repr(res)),
    ("random model: nothing to trace", lambda m, r: trace_origin(r, P[0]),
     lambda res, m: not res.found and res.components.empty and res.super_weight is None),
    ("no BOS: the planted neuron never fires", lambda m, r: find_massive_activations(m, P, prepend_bos=False),
     lambda res, m: len(res) == 0),
    ("threshold above every value", lambda m, r: find_massive_activations(m, P, threshold=1e9),
     lambda res, m: len(res) == 0 and res.summary().empty),
    ("prompts of different lengths", lambda m, r: find_massive_activations(m, P),
     lambda res, m: _same_as_separate(res, m)),
    ("negative layer counts from the end", lambda m, r: trace_origin(m, P[0], layer=-3, ablate=False),
     lambda res, m: res.layer == 1 and res.writer_layer == 1),
    ("sinks named on a random model", lambda m, r: attention_sinks(r, P, sink_positions=[0]),
     lambda res, m: res.sink_positions == ((0,), (0,)) and res.first_massive_layer is None),
    ("short calibration texts still find the bias term", lambda m, r: build_intervention(m, ["hello world", "abc"]),
     lambda res, m: res.dims == (planted(m).dim,) and res.layers == ((planted(m).layer,),)),
]


@pytest.mark.parametrize("call, check", [c[1:] for c in RESULTS], ids=[c[0] for c in RESULTS])
def test_edge_input_gives_a_correct_result(m, r, call, check):
    assert check(call(m, r), m)


def test_bad_input_table_has_at_least_25_cases():
    assert len(ERRORS) + len(RESULTS) + len(TRAIN_MODE) + 3 >= 25  # + NaN weights, fp16 overflow, fp16 in range


# --- models in a bad state --------------------------------------------------------------------------------------

TRAIN_MODE = {
    "find_massive_activations": lambda m: find_massive_activations(m, P),
    "trace_origin": lambda m: trace_origin(m, P[0]),
    "attention_sinks": lambda m: attention_sinks(m, P),
    "path_patch": lambda m: path_patch(m, P),
    "build_intervention": lambda m: build_intervention(m, P),
    "perplexity": lambda m: perplexity(m, P, seq_len=8),
}


@pytest.mark.parametrize("name", TRAIN_MODE)
def test_model_in_training_mode_is_refused(m, name):
    """Decision: analyses raise rather than silently switching modes (dropout would make results random)."""
    m.train()
    try:
        with pytest.raises(ValueError, match="training mode.*model.eval"):
            TRAIN_MODE[name](m)
        assert m.training  # the user's mode is left alone
    finally:
        m.eval()


def test_nan_weights_raise_naming_the_weight(m):
    W = m.blocks[2].mlp.W_in
    old = float(W[3, 4])
    try:
        with torch.no_grad():
            W[3, 4] = float("nan")
        for call in (lambda: find_massive_activations(m, P), lambda: trace_origin(m, P[0]),
                     lambda: attention_sinks(m, P)):
            with pytest.raises(ValueError, match=r"weights hold NaN or inf \(model\.layers\.2\.mlp\.up_proj\.weight"):
                call()
    finally:
        with torch.no_grad():
            W[3, 4] = old
    assert len(find_massive_activations(m, P)) > 0


def test_fp16_overflow_is_flagged_never_silent():
    h = tiny_model("llama", plant=Plant(1, 7, 5, 1e5), dtype=torch.float16)
    assert h.cfg.dtype == torch.float16
    with pytest.warns(RuntimeWarning, match="overflow torch.float16"):
        acts = find_massive_activations(h, P)
    assert int(acts.nonfinite[1:].min()) > 0 and int(acts.nonfinite[0]) == 0
    assert set(acts.dim.tolist()) == {5} and torch.isinf(acts.value).all()  # reported as inf, with the warning
    with pytest.warns(RuntimeWarning, match="overflow torch.float16"):
        origin = trace_origin(h, P[0], ablate=False)
    assert math.isinf(origin.value)
    with pytest.warns(RuntimeWarning, match="overflow torch.float16"):
        path_patch(h, P, receivers=("direct",))
    with pytest.warns(RuntimeWarning, match="overflow torch.float16"):
        assert math.isinf(perplexity(h, P, seq_len=8).perplexity)


def test_fp16_in_range_is_exact_and_quiet():
    h = tiny_model("llama", dtype=torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        acts = find_massive_activations(h, P)
    assert set(acts.dim.tolist()) == {5} and int(acts.nonfinite.sum()) == 0
    assert ((acts.value - 1000).abs() < 2).all()


# --- hook hygiene: an exception anywhere leaves no hook and no changed weight ------------------------------------

class Boom(Exception):
    pass


def _fail_on_call(monkeypatch, model, n: int, block: int = 2):
    """Block `block` raises Boom on its n-th forward call, in the middle of the hooked forward pass."""
    calls = [0]
    layer = model.blocks[block]._original_component
    forward = layer.forward

    def fail(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise Boom(f"forward call {n}")
        return forward(*args, **kwargs)

    monkeypatch.setattr(layer, "forward", fail)
    return calls


# (case id, call(m, massive), n-th forward call of block 2 that raises[, block]): late calls hit weight edits
FAILURES = [
    ("detection", lambda m, a: find_massive_activations(m, P), 1),
    ("origin capture", lambda m, a: trace_origin(m, P[0]), 1),
    ("origin, super weight zeroed",  # threshold 0: step 2 adds a block-0 weight, so its short pass zeroes the
     lambda m, a: trace_origin(m, P[0], n_random=0, search_steps=3, threshold=0.0), 2, 1),  # real weights
    ("origin, neurons mean-ablated", lambda m, a: trace_origin(m, P[0], ablate="mean", n_random=0), 2),
    ("attention sinks", lambda m, a: attention_sinks(m, P), 2),
    ("implicit bias swap", lambda m, a: implicit_bias(m, P), 5),
    ("path patching, corrupted neuron", lambda m, a: path_patch(m, P, massive=a, senders=("neuron", 1, 7)), 2),
    ("path patching, super weight zeroed",
     lambda m, a: path_patch(m, P, massive=a, senders=("super_weight", 1, 7, 5)), 2),
    ("path patching, receivers", lambda m, a: path_patch(m, P, massive=a), 3),
    ("intervention rebuild check", lambda m, a: build_intervention(m, P), 5),
    ("perplexity under an intervention", lambda m, a: perplexity(m, P, seq_len=8, intervention="zero", calibration=P),
     7),
]


@pytest.mark.parametrize("call, n, block", [(*c[1:], 2)[:3] for c in FAILURES], ids=[c[0] for c in FAILURES])
def test_exception_inside_an_analysis_leaves_the_model_clean(m, monkeypatch, call, n, block):
    massive = find_massive_activations(m, P)
    before = ModelState.of(m)
    calls = _fail_on_call(monkeypatch, m, n, block)
    with pytest.raises(Boom):
        call(m, massive)
    assert calls[0] == n
    monkeypatch.undo()
    before.check(m)
    assert find_massive_activations(m, P).to_dataframe().equals(massive.to_dataframe())


def test_exception_inside_a_context_manager_leaves_the_model_clean(m, iv, bias):
    before = ModelState.of(m)
    for ctx in (intervene(m, iv), swap_implicit_bias(m, bias)):
        with pytest.raises(Boom), ctx:
            m(P[0])
            raise Boom("user code")
        before.check(m)


def test_a_hook_that_never_fires_raises_and_comes_off(m):
    from mi_massive._hooks import hooked

    before = ModelState.of(m)
    with pytest.raises(RuntimeError, match="never fired"), hooked(m, [("blocks.3.hook_resid_post", lambda x, h: None)]):
        pass  # no forward pass: the hook cannot fire
    before.check(m)


# --- determinism ----------------------------------------------------------------------------------------------

ANALYSES = {
    "find_massive_activations": lambda m: find_massive_activations(m, P).to_dataframe(),
    "layer_profile": lambda m: layer_profile(m, P).to_dataframe(),
    "trace_origin": lambda m: trace_origin(m, P[0], n_random=2).causal,
    "attention_sinks": lambda m: attention_sinks(m, P).to_dataframe(),
    "implicit_bias": lambda m: implicit_bias(m, P).swap,
    "path_patch": lambda m: path_patch(m, P).to_dataframe(),
    "build_intervention (control)": lambda m: build_intervention(m, P, mode="control").to_dataframe(),
}


@pytest.mark.parametrize("name", ANALYSES)
def test_same_inputs_give_the_same_outputs(m, name):
    first, second = ANALYSES[name](m), ANALYSES[name](m)
    assert len(first) > 0 and first.equals(second)


def test_tiny_models_are_reproducible():
    a, b = tiny_hf_model("qwen2", seed=3).state_dict(), tiny_hf_model("qwen2", seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = tiny_hf_model("qwen2", seed=4).state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


# --- issue 19: the edges that gave wrong answers, one test per item ----------------------------------------------

class _Touch:
    """Unpickling this creates `path` (what a crafted result file would do)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.path),)


def test_1_a_crafted_pickle_result_file_runs_nothing(tmp_path):
    import pickle

    from mi_massive import MassiveActivations

    for i, write in enumerate((lambda obj, f: torch.save(obj, f), lambda obj, f: f.write_bytes(pickle.dumps(obj)))):
        marker, crafted = tmp_path / f"pwned{i}", tmp_path / f"crafted{i}.pt"
        write({"x": _Touch(marker)}, crafted)
        with pytest.raises(ValueError, match="is a pickle file.*can run code when opened"):
            MassiveActivations.load(crafted)
        assert not marker.exists()


def test_1_result_files_are_safetensors_with_class_and_version(m, tmp_path):
    import json

    acts = find_massive_activations(m, P)
    acts.save(tmp_path / "a.safetensors")
    from safetensors import safe_open

    with safe_open(tmp_path / "a.safetensors", "pt") as f:
        header = json.loads(f.metadata()["mi_massive"])
    assert header["class"] == "MassiveActivations" and header["version"] == 1
    back = mi_massive.MassiveActivations.load(tmp_path / "a.safetensors")
    assert back.to_dataframe().equals(acts.to_dataframe()) and repr(back) == repr(acts)


def _shift(pos, dim, value):
    """A user's torch forward hook: adds `value` at (pos, dim) of a module's output (first element of a tuple)."""
    def fn(module, args, out):
        x = (out[0] if isinstance(out, tuple) else out).clone()
        x[:, pos, dim] += value
        return (x, *out[1:]) if isinstance(out, tuple) else x
    return fn


@pytest.mark.parametrize("where", ["block", "mlp", "attn", "embed"])
def test_2_the_scan_honours_a_users_torch_hooks(m, where):
    from mi_massive._rule import massive_mask
    from mi_massive.engine import _bare

    module = {"block": lambda: m.blocks[1], "mlp": lambda: m.blocks[1].mlp, "attn": lambda: m.blocks[1].attn,
              "embed": lambda: m.embed}[where]()
    _bare.trunk_runner(m)  # no hook: the fast path stands in
    prompt = "hello world, this is a test"
    handle = module.register_forward_hook(_shift(3, 9, 5000.0))
    try:
        with pytest.raises(_bare.Unsupported, match="hooks"):
            _bare.trunk_runner(m)
        with torch.no_grad():
            _, cache = m.run_with_cache(m.to_tokens(prompt))
        ref = torch.stack([cache[f"blocks.{l}.hook_resid_post"][0] for l in range(m.cfg.n_layers)])  # (layer, pos, d)
        acts = find_massive_activations(m, prompt)
        profile = layer_profile(m, prompt)
        sinks = attention_sinks(m, prompt)
    finally:
        handle.remove()
    expect = massive_mask(ref, threshold=100.0, ratio=1000.0).nonzero().tolist()
    got = sorted(zip(acts.layer.tolist(), acts.pos.tolist(), acts.dim.tolist()))
    assert got == sorted(map(tuple, expect)) and (3, 9) in {(p, d) for _, p, d in got}  # the hook's entry found
    torch.testing.assert_close(acts.value, ref[acts.layer, acts.pos, acts.dim].float())
    torch.testing.assert_close(profile.median, ref.abs().flatten(1).median(1).values.float())
    assert 3 in sinks.sink_positions[0]  # sink detection saw the hook's massive value too


def test_3_negative_positions_count_from_each_prompts_end(m):
    from mi_massive.interventions import intervention_hooks

    toks = m.to_tokens("hello world")  # (1, 12)
    hit = {}
    for positions in ([-1], [toks.shape[1] - 1]):
        iv = build_intervention(m, P, mode="value", value=123.0, dims=[9], layers=[2], positions=positions,
                                check_rebuild=False)
        with torch.no_grad(), intervene(m, iv):
            _, cache = m.run_with_cache(toks)
        hit[positions[0] < 0] = cache["blocks.2.hook_resid_post"][0, :, 9]
    assert float(hit[True][-1]) == 123.0 and torch.equal(hit[True], hit[False])
    assert intervention_hooks  # (the hooks decide positions per pass)


def test_4_write_report_takes_a_bare_string_as_one_prompt(m, tmp_path, monkeypatch):
    import sys

    from mi_massive import write_report

    seen = []

    def stop(model, prompts, **kw):
        seen.append(list(prompts))
        raise RuntimeError("stop")

    import mi_massive.detect  # noqa: F401

    monkeypatch.setattr(sys.modules["mi_massive.detect"], "scan", stop)
    with pytest.raises(RuntimeError, match="stop"):
        write_report(m, tmp_path / "r.html", "Summer")
    assert seen == [["Summer"]]


class _Words:
    """A stand-in tokenizer: one token per `per` characters (runs of '=' pack many characters in a token)."""

    bos_token_id = 1

    def __init__(self, per):
        self.per, self.chars = per, 0

    def __call__(self, text, add_special_tokens=False):
        self.chars += len(text)
        return {"input_ids": [2] * (len(text) // self.per)}


class _Stub:
    def __init__(self, per):
        self.tokenizer = _Words(per)


def test_5_max_chunks_scores_as_many_chunks_as_asked_whatever_the_characters_per_token():
    from mi_massive.perplexity import _chunks

    stub = _Stub(per=50)  # 50 characters a token: the old 20-characters cut found fewer chunks than asked
    chunks = list(_chunks(stub, ["=" * 50 * 16 * 8], 16, 8, True))
    assert len(chunks) == 8 and all(c.shape == (17,) and c[0] == 1 for c in chunks)


def test_6_corpus_perplexity_streams():
    from mi_massive.perplexity import _PIECE, _chunks

    stub = _Stub(per=1)
    text = ("word " * 2_000_000).strip()  # 10 MB
    assert len(list(_chunks(stub, [text], 64, 2, False))) == 2
    assert stub.tokenizer.chars <= _PIECE  # only the first piece was tokenised
    stub = _Stub(per=1)
    assert sum(1 for _ in _chunks(stub, [text[:300_000]] * 3, 1000, None, False)) == 900  # pieces joined exactly


def test_7_a_loaded_transformers_model_is_taken_over_loudly_or_copied():
    import mi_massive.models as models
    from mi_massive.testing import char_tokenizer

    hf = tiny_hf_model("llama").to(torch.bfloat16)
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    kinds, training = [type(mod).__name__ for mod in hf.modules()], hf.training
    bridge = load_model(hf, tokenizer=char_tokenizer(), copy=True)
    assert bridge.cfg.dtype == torch.bfloat16  # the model's own dtype, never changed silently
    assert [type(mod).__name__ for mod in hf.modules()] == kinds and hf.training == training  # untouched
    assert all(torch.equal(before[k], v) for k, v in hf.state_dict().items())
    models._WARNED_TAKEOVER = False
    with pytest.warns(UserWarning, match="takes over the transformers model.*copy=True"):
        load_model(hf, tokenizer=char_tokenizer())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(tiny_hf_model("llama"), tokenizer=char_tokenizer())  # once per process
    with pytest.warns(UserWarning, match="cast from torch.float32 to torch.float16"):
        load_model(tiny_hf_model("llama"), tokenizer=char_tokenizer(), dtype=torch.float16)  # a cast is always said


def test_8_cfg_device_is_where_the_weights_are(monkeypatch):
    from transformer_lens.model_bridge import TransformerBridge

    from mi_massive.testing import char_tokenizer

    boot = TransformerBridge.boot_transformers

    def on_a_gpu_machine(*args, **kwargs):  # TransformerLens picks CUDA for cfg.device, weights stay put
        bridge = boot(*args, **kwargs)
        bridge.cfg.device = "cuda"
        return bridge

    monkeypatch.setattr(TransformerBridge, "boot_transformers", on_a_gpu_machine)
    model = load_model(tiny_hf_model("llama"), tokenizer=char_tokenizer(), device="cpu", copy=True)
    assert model.cfg.device == "cpu" == next(model.parameters()).device.type
    assert len(find_massive_activations(model, "hello")) >= 0  # runs: tokens go where the weights are


def test_10_cache_files_follow_the_umask_and_stale_fetch_folders_go(tmp_path, monkeypatch):
    import os

    from mi_massive import models

    folder = tmp_path / "staging"
    folder.mkdir(mode=0o700)
    (folder / "model.safetensors").write_bytes(b"x")
    (folder / "model.safetensors").chmod(0o600)
    old = os.umask(0o022)
    try:
        models._apply_umask(folder)
    finally:
        os.umask(old)
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o644 and folder.stat().st_mode & 0o777 == 0o755
    monkeypatch.setenv("MI_MASSIVE_CACHE", str(tmp_path / "cache"))
    cached = models.embedded_path("smollm2-135m")
    cached.mkdir(parents=True)
    (cached / "mi_massive.json").write_text("{}")
    dead, live = cached.parent / ".fetching-999999999-abc", cached.parent / f".fetching-{os.getpid()}-abc"
    dead.mkdir(), live.mkdir()
    assert models.fetch_embedded("smollm2-135m") == cached
    assert not dead.exists() and live.exists()


def test_10_a_broken_cache_names_refetch(tmp_path, monkeypatch):
    from mi_massive import models

    monkeypatch.setenv("MI_MASSIVE_CACHE", str(tmp_path))
    cached = models.embedded_path("smollm2-135m")
    cached.mkdir(parents=True)
    (cached / "mi_massive.json").write_text('{"hf_id": "HuggingFaceTB/SmolLM2-135M-Instruct"}')
    (cached / "config.json").write_text("{trunc")
    with pytest.raises(RuntimeError, match=r"cached smollm2-135m .* is broken .*refetch=True.*--refetch"):
        load_model("smollm2-135m")
    forced = []
    monkeypatch.setattr(models, "fetch_embedded", lambda name, force=False: forced.append(force) or cached)
    with pytest.raises(RuntimeError):
        load_model("smollm2-135m", refetch=True)
    assert forced == [True]


def _bias_table(m, corpora):
    from mi_massive import bias_term_table

    return bias_term_table(m, corpora)


def _truncated_result(m, tmp_path):
    find_massive_activations(m, "hello").save(tmp_path / "a.st")
    data = (tmp_path / "a.st").read_bytes()
    (tmp_path / "a.st").write_bytes(data[: len(data) // 2])
    return mi_massive.MassiveActivations.load(tmp_path / "a.st")


def _junk_result(tmp_path):
    (tmp_path / "j.st").write_bytes(b"not a result at all")
    return mi_massive.MassiveActivations.load(tmp_path / "j.st")


def _other_class(m, tmp_path):
    layer_profile(m, "hello").save(tmp_path / "p.st")
    return mi_massive.MassiveActivations.load(tmp_path / "p.st")


def _corpus_cache(tmp_path, monkeypatch, content):
    from mi_massive import load_corpus

    monkeypatch.setenv("MI_MASSIVE_CACHE", str(tmp_path))
    (tmp_path / "corpora").mkdir(exist_ok=True)
    (tmp_path / "corpora" / "lee-news.json").write_text(content)
    return load_corpus("lee-news")


def _meta_model():
    from mi_massive.testing import char_tokenizer

    with torch.device("meta"):
        hf = tiny_hf_model("llama")
    return load_model(hf, tokenizer=char_tokenizer())


# (case id, call(m, tmp_path, monkeypatch), exact error type, message: names the argument)
ISSUE_19_ERRORS = [
    ("no corpus", lambda m, t, mp: _bias_table(m, ()), ValueError, "inputs must name at least one corpus"),
    ("misspelt bare corpus", lambda m, t, mp: _bias_table(m, "wiki-e"), ValueError, "inputs: unknown corpus 'wiki-e'"),
    ("perplexity batch_size 0", lambda m, t, mp: perplexity(m, "hello world", seq_len=4, batch_size=0), ValueError,
     "batch_size must be an int >= 1, got 0"),
    ("perplexity batch_size -1", lambda m, t, mp: perplexity(m, "hello world", seq_len=4, batch_size=-1), ValueError,
     "batch_size must be an int >= 1, got -1"),
    ("perplexity batch_size 2.5", lambda m, t, mp: perplexity(m, "hello world", seq_len=4, batch_size=2.5), TypeError,
     "batch_size must be an int"),
    ("scan batch_size 2.5", lambda m, t, mp: find_massive_activations(m, P, batch_size=2.5), TypeError,
     "batch_size must be an int"),
    ("scan batch_size None", lambda m, t, mp: find_massive_activations(m, P, batch_size=None), TypeError,
     "batch_size must be an int"),
    ("profile k=True", lambda m, t, mp: layer_profile(m, P, k=True), TypeError, "k must be an int"),
    ("dims=5", lambda m, t, mp: build_intervention(m, P, dims=5), TypeError, r"dims must be a list.*dims=\[5\]"),
    ("n_check=2.5", lambda m, t, mp: build_intervention(m, P, n_check=2.5), TypeError, "n_check must be an int"),
    ("seed=1.5", lambda m, t, mp: build_intervention(m, P, seed=1.5), TypeError, "seed must be an int"),
    ("path_patch layers=5", lambda m, t, mp: path_patch(m, P, layers=5), TypeError, r"layers must be a list.*\[5\]"),
    ("swap_implicit_bias None", lambda m, t, mp: swap_implicit_bias(m, None).__enter__(), TypeError,
     "bias must be an ImplicitBias"),
    ("model on the meta device", lambda m, t, mp: _meta_model(), ValueError, "meta device"),
    ("truncated result file", lambda m, t, mp: _truncated_result(m, t), ValueError, "path .*(truncated|damaged)"),
    ("junk result file", lambda m, t, mp: _junk_result(t), ValueError, "path .*not an mi_massive result file"),
    ("result of another class", lambda m, t, mp: _other_class(m, t), ValueError,
     "path .*holds a LayerProfile, not a MassiveActivations"),
    ("truncated corpus cache", lambda m, t, mp: _corpus_cache(t, mp, '["abc", "de'), RuntimeError,
     r"cached corpus 'lee-news' .* is broken.*refresh=True"),
    ("empty corpus cache", lambda m, t, mp: _corpus_cache(t, mp, "[]"), RuntimeError,
     r"is broken \(not a non-empty list of texts\).*refresh=True"),
    ("prepend_bos=True with a tensor lacking BOS", lambda m, t, mp: find_massive_activations(
        m, torch.tensor([[5, 6, 7]]), prepend_bos=True), ValueError, "prepend_bos=True, but the token tensor"),
]


@pytest.mark.parametrize("call, exc, match", [c[1:] for c in ISSUE_19_ERRORS], ids=[c[0] for c in ISSUE_19_ERRORS])
def test_11_ugly_errors_are_one_clear_error_naming_the_argument(m, tmp_path, monkeypatch, call, exc, match):
    before = ModelState.of(m)
    with pytest.raises(Exception) as info:
        call(m, tmp_path, monkeypatch)
    assert type(info.value) is exc and __import__("re").search(match, str(info.value)), repr(info.value)
    before.check(m)


def test_11_one_intervene_object_can_be_entered_again(m, iv):
    applied = intervene(m, iv)
    toks = m.to_tokens(P[0])
    outs = []
    for _ in range(2):
        with torch.no_grad(), applied:
            outs.append(m(toks))
    with torch.no_grad():
        clean = m(toks)
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], clean)


def test_one_vocabulary_across_functions_that_run_the_model_over_many_inputs():
    """`inputs` first after the model; batch_size, progress and prepend_bos with one default each. Exceptions, on
    purpose: path_patch's batch_size counts patched rows (prompt x receiver), massive_stats measures both BOS
    settings unless told one."""
    import inspect

    funcs = ["find_massive_activations", "layer_profile", "massive_stats", "build_intervention", "perplexity",
             "bias_term_table", "attention_sinks", "implicit_bias", "path_patch", "write_report"]
    for name in funcs:
        params = inspect.signature(getattr(mi_massive, name)).parameters
        assert list(params)[1 if name != "write_report" else 2] == "inputs", name
        assert params["progress"].default is None, name
        if "batch_size" in params and name != "path_patch":
            assert params["batch_size"].default == 8, name
        if "prepend_bos" in params and name != "massive_stats":
            assert params["prepend_bos"].default is None, name
    fields = {cls: {f.name for f in __import__("dataclasses").fields(getattr(mi_massive, cls))}
              for cls in ("MassiveActivations", "LayerProfile", "MassiveStats", "Intervention", "AttentionSinks",
                          "ImplicitBias", "Origin", "PathPatching")}
    assert all("hook_names" in f and "hook_template" not in f and "hooks" not in f for f in fields.values()), fields


def test_a_result_file_whose_header_length_starts_with_0x80_is_not_taken_for_a_pickle(tmp_path, tiny_llama):
    """safetensors opens with its header's length: one whose low byte is 0x80 (a pickle's first byte) still loads."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from mi_massive import MassiveActivations, find_massive_activations

    found = find_massive_activations(tiny_llama, "Summer is warm.")
    found.save(tmp_path / "a.safetensors")
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    for pad in range(512):
        path = tmp_path / "b.safetensors"
        save_file(tensors, str(path), metadata={**meta, "pad": " " * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no padding gave a header length with low byte 0x80")
    again = MassiveActivations.load(path)
    assert torch.equal(again.dim, found.dim) and again.str_tokens == found.str_tokens


def test_trace_origin_refuses_a_cache_of_another_prompt_of_the_same_length(tiny_llama):
    """Issue 19, item 11: a cache of another prompt with as many tokens was accepted and its value reported."""
    this, other = tiny_llama.to_tokens("Summer is warm."), tiny_llama.to_tokens("Winter is cold!")
    assert this.shape == other.shape
    _, cache = tiny_llama.run_with_cache(other)
    with pytest.raises(ValueError, match="cache does not hold this prompt"):
        trace_origin(tiny_llama, this, cache=cache, ablate=False)
    _, own = tiny_llama.run_with_cache(this)
    assert trace_origin(tiny_llama, this, cache=own, ablate=False).dim == planted(tiny_llama).dim


def test_an_in_memory_tokenizer_without_a_pad_token_works():
    """Issue 19, item 11: a tokenizer with no pad token, handed in with a loaded model, batches prompts."""
    from mi_massive.testing import char_tokenizer

    tok = char_tokenizer()
    tok.pad_token = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the take-over warning
        model = load_model(tiny_hf_model("llama"), tokenizer=tok)
    found = find_massive_activations(model, ["Summer is warm.", "Hi", "Winter is cold and dark."], batch_size=2)
    assert len(found.str_tokens) == 3 and found.str_tokens[1][-1] == "i"
