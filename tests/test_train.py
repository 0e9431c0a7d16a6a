"""The training lab on the CPU: a tiny two-arm run, its curves and checkpoints, and k'/v' receiving attention."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

from mi_massive.train import LabSpec, TrainingRun, train
from mi_massive.train import modeling

SPEC = LabSpec(d_model=32, n_layers=2, n_heads=2, n_ctx=16, batch_size=4, steps=4, eval_every=2, warmup=2,
               eval_windows=2, val_windows=2, data="copy", vocab_size=515, lr=3e-3)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    out = tmp_path_factory.mktemp("lab")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = train(("default", "attn_bias"), SPEC, out_dir=out, device="cpu", progress=False)
    return run, out


@pytest.fixture(scope="module")
def bias_model(lab):
    from mi_massive import load_model

    run, _ = lab
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(run.arm_info.set_index("arm").at["attn_bias", "checkpoint"], device="cpu")


def test_curves_per_arm_and_scan(lab, tmp_path):
    run, _ = lab
    assert run.arms == ("default", "attn_bias")
    df = run.to_dataframe()
    assert sorted(df.step.unique()) == [0, 2, 4] and len(df) == 6  # scans at 0, every 2 steps and the end
    assert len(run.curves) == 6 * SPEC.n_layers
    assert (run.curves.ratio_pos0 > 0).all() and (run.curves["median"] > 0).all()
    assert run.curves[run.curves.arm == "default"].bias_mass.isna().all()  # no k': undefined, not 0
    bias = run.curves[run.curves.arm == "attn_bias"].bias_mass
    assert ((bias > 0) & (bias < 1)).all()
    assert (df.val_loss > 0).all() and df.train_loss.iloc[1:].notna().any()
    # saved and loaded without the models, both ways
    run.save(tmp_path / "run.safetensors")
    again = TrainingRun.load(tmp_path / "run.safetensors")
    assert again.arms == run.arms and again.to_dataframe().equals(run.to_dataframe())
    back = TrainingRun.from_json(run.to_json())
    assert back.to_dataframe().round(6).equals(run.to_dataframe().round(6))
    view = run.show()
    assert "Training lab" in view.local_src


def test_checkpoints_reload_with_load_model(lab, bias_model):
    from mi_massive import load_model
    from mi_massive.engine._bare import unwired

    run, out = lab
    info = run.arm_info.set_index("arm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = load_model(info.at["default", "checkpoint"], device="cpu")
    assert plain.original_model.config.architectures == ["LlamaForCausalLM"]  # the default arm is a plain Llama
    assert type(bias_model.blocks[0].attn).__name__ == "LabAttentionBridge"  # the bridge computes k'/v'
    x = torch.randint(3, 515, (2, 12))
    with torch.no_grad():
        logits = bias_model(x)
        with unwired(bias_model) as hf:
            bare = hf(x).logits  # the HF module's own attention
    torch.testing.assert_close(logits, bare, atol=1e-5, rtol=1e-5)


def test_attn_bias_k_v_receive_attention(bias_model):
    x = torch.randint(3, 515, (2, 12))
    _, cache = bias_model.run_with_cache(x)
    for layer in range(SPEC.n_layers):
        p = cache[f"blocks.{layer}.attn.hook_pattern"]  # (batch, head, query_pos, key_pos)
        w = cache[f"blocks.{layer}.attn.hook_bias_weight"]  # (batch, head, query_pos): attention on k'
        torch.testing.assert_close(p.sum(-1) + w, torch.ones_like(w), atol=1e-5, rtol=0)
        assert float(w.mean()) > 0.01
    attn = bias_model.original_model.model.layers[0].self_attn
    attn = getattr(attn, "original_component", attn)
    torch.manual_seed(SPEC.seed)  # the arm's initial k' (same seed, same config): training moved it
    init = modeling.build_model(bias_model.original_model.config).model.layers[0].self_attn
    assert not torch.allclose(init.k_bias, attn.k_bias) and not torch.allclose(init.v_bias, attn.v_bias)
    with torch.no_grad():
        before = bias_model(x)
        saved = attn.v_bias.clone()
        attn.v_bias.zero_()
        try:
            after = bias_model(x)
        finally:
            attn.v_bias.copy_(saved)
    assert not torch.allclose(before, after)  # v' reaches the output


@pytest.mark.parametrize("arch", modeling.ARCHS)
@pytest.mark.parametrize("variant", ["attn_bias", "softmax1", "sigmoid", "gated"])
def test_bridge_computes_the_variant(variant, arch):
    from mi_massive import load_model

    config = modeling.lab_config(variant, d_model=32, n_layers=2, n_heads=2, vocab_size=515, n_ctx=16, arch=arch)
    torch.manual_seed(0)
    hf = modeling.build_model(config)
    x = torch.randint(3, 515, (2, 10))
    with torch.no_grad():
        hf.train()
        fast = hf(x).logits  # scaled_dot_product_attention path (training)
        hf.eval()
        eager = hf(x).logits
        if variant == "softmax1":  # no weights of its own: a plain model takes the same state dict
            plain = modeling.build_model(modeling.lab_config("default", d_model=32, n_layers=2, n_heads=2,
                                                             vocab_size=515, n_ctx=16, arch=arch))
            plain.load_state_dict(hf.state_dict())
            plain = plain.eval()(x).logits
    from mi_massive.testing import char_tokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = load_model(hf, tokenizer=char_tokenizer(), device="cpu")
    with torch.no_grad():
        out = bridge(x)
    torch.testing.assert_close(fast, eager, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-4)
    assert type(bridge.blocks[0].attn).__name__ == {"llama": "LabAttentionBridge",
                                                     "gpt2": "LabJointQKVAttentionBridge"}[arch]
    if variant == "softmax1":  # the variant changes the function: the same weights in a plain model differ
        assert not torch.allclose(plain, eager, atol=1e-3)


def test_package_analyses_run_on_a_lab_checkpoint(bias_model):
    from mi_massive import attention_sinks, find_massive_activations, path_patch, trace_origin
    from mi_massive.testing import Plant, plant_massive_activation

    plant_massive_activation(bias_model, Plant(layer=0, neuron=3, dim=5, magnitude=1000.0))
    bos = bias_model.tokenizer.bos_token_id
    x = torch.cat([torch.full((2, 1), bos), torch.randint(3, 515, (2, 11))], dim=1)
    acts = find_massive_activations(bias_model, x)
    assert acts.positions(0) == [0] and 5 in acts.dims
    assert trace_origin(bias_model, x[:1], ablate=False).writer_layer == 0
    sinks = attention_sinks(bias_model, x)
    assert sinks.sink_positions[0] == (0,)
    pp = path_patch(bias_model, x, receivers=("k", "v"), progress=False)
    assert len(pp.to_dataframe())


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="unknown arm 'softmax2'"):
        train(("default", "softmax2"), SPEC)
    with pytest.raises(ValueError, match="n_heads"):
        train(("default",), LabSpec(d_model=30, n_heads=4))
    with pytest.raises(ValueError, match="vocab_size"):
        LabSpec(vocab_size=515).validate()


def test_cli_knows_the_arms_and_data():
    from mi_massive import cli
    from mi_massive.train import data
    from mi_massive.train.lab import DATA

    assert cli.TRAIN_ARMS == modeling.VARIANTS
    assert cli.TRAIN_DATA == DATA
    assert cli.TRAIN_SYNTHETIC == data.SYNTHETIC and cli.TRAIN_SYNTHETIC_VOCAB == data.SYNTHETIC_VOCAB
    assert cli.TRAIN_ARCHS == modeling.ARCHS
    assert cli.main(["train", "--steps", "5", "--eval-every", "9"]) == 2  # checked before anything loads
    assert cli.main(["train", "--resume"]) == 2  # the state needs a folder


def test_train_help_imports_no_torch():
    code = ("import sys; from mi_massive.cli import build_parser\ntry: build_parser().parse_args(['train', '--help'])\n"
            "except SystemExit: pass\n"
            "print(any(m.startswith(('torch', 'transformers')) for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip().splitlines()[-1] == "False"


def test_backcopy_task_follows_its_rule():
    from mi_massive.train.data import backcopy_tokens

    data = backcopy_tokens(n_train=1 << 16, n_val=1 << 12, seed=1)
    x = data.train - 3
    assert int(x.min()) >= 0 and int(x.max()) < 512 and len(data.train) == 1 << 16 and len(data.val) == 1 << 12
    trigger = x[1:-1] < 16  # a trigger at t: x[t+1] copies x[t-1] (except where a document ends at the trigger)
    assert 0.02 < float(trigger.float().mean()) < 0.5
    assert float((x[2:][trigger] == x[:-2][trigger]).float().mean()) > 0.97
    plain = ~trigger & (x[:-2] >= 16)
    assert float((x[2:][plain] == x[:-2][plain]).float().mean()) < 0.5  # elsewhere the bigram chain moves on
    # a plain token has 8 successors in the chain; a document boundary after it adds a stray one now and then
    succ: dict[int, set[int]] = {}
    for a, b in zip(x[:-1].tolist(), x[1:].tolist()):
        if a >= 16:
            succ.setdefault(a, set()).add(b)
    counts = sorted(len(s) for s in succ.values())
    assert counts[len(counts) // 2] <= 8 and counts[-1] <= 12


def test_a_time_budget_stops_at_a_scan_with_records():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = train(("default",), SPEC, device="cpu", progress=False, max_seconds=0.0)
    assert sorted(run.curves.step.unique()) == [0]  # stopped at its first scan, records kept
    assert int(run.arm_info.stopped_at.iloc[0]) == 0
    df = TrainingRun.from_json(run.to_json()).to_dataframe()  # the step-0 scan has no training loss yet
    assert len(df) == 1 and df.train_loss.isna().all() and df.val_loss.notna().all()


def test_untied_arm_has_its_own_unembedding(tmp_path):
    import dataclasses

    from mi_massive import load_model

    spec = dataclasses.replace(SPEC, tie_embeddings=False, steps=2, eval_every=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = train(("default",), spec, out_dir=tmp_path, device="cpu", progress=False)
        model = load_model(run.arm_info.checkpoint.iloc[0], device="cpu")
    assert model.original_model.config.tie_word_embeddings is False
    assert not torch.allclose(model.W_U, model.W_E.T)


def test_arms_are_compared_at_the_last_step_they_all_reached(lab):
    run, _ = lab
    cut = run.curves[~((run.curves.arm == "attn_bias") & (run.curves.step == SPEC.steps))]  # as if stopped early
    short = TrainingRun(run.arms, cut, run.arm_info, run.spec, run.data)
    assert run.common_step() == SPEC.steps and short.common_step() == 2
    assert short.final(2).step.tolist() == [2, 2] and short.final().step.tolist() == [SPEC.steps, 2]
    with pytest.raises(ValueError, match="no scan at step 4 for attn_bias"):
        short.final(4)


def test_gpt2_arms_train_and_reload(tmp_path):
    """The paper's architecture (learned absolute positions, GPT-2's joint q/k/v): the paper's three arms, each
    checkpoint loaded by load_model, k'/v' receiving attention through the bridge as in the HF model."""
    import dataclasses

    from mi_massive import find_massive_activations, load_model

    spec = dataclasses.replace(SPEC, arch="gpt2")
    arms = ("default", "sink_token", "attn_bias")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = train(arms, spec, out_dir=tmp_path, device="cpu", progress=False)
        ckpt = run.arm_info.set_index("arm").checkpoint
        model = load_model(ckpt["sink_token"], device="cpu")
        bias = load_model(ckpt["attn_bias"], device="cpu")
    assert run.arms == arms and len(run.curves) == 9 * SPEC.n_layers
    assert model.original_model.config.model_type == "gpt2" and model.cfg.n_layers == SPEC.n_layers
    assert (run.curves.first_token_mass > 0).all()
    got = run.curves[run.curves.arm == "attn_bias"].bias_mass
    assert ((got > 0) & (got < 1)).all()
    x = torch.tensor([[1, 5, 9, 12, 40]])  # ids of the copy task
    find_massive_activations(model, x)  # the analyses open it
    assert type(bias.blocks[0].attn).__name__ == "LabJointQKVAttentionBridge"
    _, cache = bias.run_with_cache(x, names_filter=lambda n: n.endswith(("hook_pattern", "hook_bias_weight")))
    pattern, weight = cache["blocks.0.attn.hook_pattern"], cache["blocks.0.attn.hook_bias_weight"]
    torch.testing.assert_close(pattern.sum(-1) + weight, torch.ones_like(weight))  # the rest went to k'
    assert (weight > 0).all()


def test_a_compile_mode_reaches_torch_compile(monkeypatch):
    from mi_massive import cli
    from mi_massive.train import lab

    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: seen.append(mode) or model)
    spec = LabSpec(d_model=32, n_layers=2, n_heads=2, n_ctx=16, batch_size=2, steps=2, eval_every=2, eval_windows=1,
                   val_windows=1, data="copy", vocab_size=515)
    run = train(("default",), spec, compile="reduce-overhead", progress=False)
    assert seen == ["reduce-overhead"] and run.arm_info.compile.iloc[0] == "reduce-overhead"
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        train(("default",), spec, compile="fast")
    assert cli.TRAIN_COMPILE_MODES == lab.COMPILE_MODES


def test_text_repeated_past_the_epoch_limit_warns():
    from mi_massive.train import lab

    spec = LabSpec(d_model=32, n_layers=1, n_heads=2, n_ctx=16, batch_size=4, steps=1_000_000, eval_every=10,
                   warmup=2, eval_windows=2, val_windows=2, data="lee-news")
    tokenizer = lab._data.tokenizer_of(spec.tokenizer)
    data = lab.load_data(spec, tokenizer)
    with pytest.warns(UserWarning, match=r"lee-news.*memorises"):
        epochs = lab.warn_repeats(spec, data)
    assert epochs == pytest.approx(1_000_000 * 4 / ((len(data.train) - 1) // 17))  # windows of n_ctx + 1 tokens
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lab.warn_repeats(SPEC, lab.load_data(SPEC, tokenizer, held_out_only=True)) > 0  # synthetic: silent
        few = LabSpec(**{**spec.__dict__, "steps": 10})
        assert lab.warn_repeats(few, data) < lab.MAX_EPOCHS


def test_text_of_ones_own_trains_through_the_cli(tmp_path, capsys):
    """`--data file:PATH`: the lab reads, splits and trains on a corpus the user brings (the offline ones are small)."""
    import json

    from mi_massive import cli
    from mi_massive.train import data, lab

    docs = [f"Document {i} says that the river {'rose' if i % 2 else 'fell'} by {i} metres near town {i % 7}."
            for i in range(60)]
    corpus = tmp_path / "mine.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tokenizer = data.tokenizer_of()
    td = lab.load_data(LabSpec(data=f"file:{corpus}"), tokenizer)
    sep = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    held = [docs[i] for i in range(19, 60, 20)]  # every 20th text is held out
    assert td.val.tolist() == [t for d in held for t in tokenizer(d, add_special_tokens=False)["input_ids"] + [sep]]
    assert len(td.train) + len(td.val) == sum(len(tokenizer(d, add_special_tokens=False)["input_ids"]) + 1
                                              for d in docs)
    assert str(corpus) in td.licence and "yours to state" in td.licence
    few = lab.load_data(LabSpec(data=f"file:{corpus}", n_ctx=8, val_windows=1, eval_windows=1), tokenizer,
                        held_out_only=True)  # what analyses of a checkpoint read: the first held-out tokens alone
    assert few.train.numel() == 0 and len(few.val) >= 9 and few.val.tolist() == td.val[:len(few.val)].tolist()
    assert td.train.dtype == data.TOKEN_DTYPE and td.train.element_size() == 4  # 4 bytes a token, held in memory
    batches = data.Batches(td.train, n_ctx=8, batch_size=2, seed=0)
    assert batches.windows(0).dtype == torch.long and data.held_out(td.val, n=1, n_ctx=8, sink_id=None)[0].dtype \
        == torch.long
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["train", "--arms", "default", "--data", f"file:{corpus}", "--d-model", "32", "--n-layers",
                         "1", "--n-heads", "2", "--n-ctx", "16", "--batch-size", "2", "--steps", "2", "--eval-every",
                         "2", "--out", str(out), "--device", "cpu", "--no-compile", "--no-amp"]) == 0
    run = TrainingRun.from_json(out / "run_default.json")
    assert run.spec["data"] == f"file:{corpus}" and run.data["train_tokens"] == len(td.train)
    assert sorted(run.curves.step.unique()) == [0, 2]
    assert cli.TRAIN_FILE == data.FILE
    with pytest.raises(ValueError, match="at least 20"):
        data.corpus_tokens(tokenizer, (f"file:{corpus}",), max_texts=10)
    with pytest.raises(FileNotFoundError, match="no text file or folder"):
        LabSpec(data=f"file:{tmp_path / 'absent.txt'}").validate()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--data", f"file:{tmp_path / 'absent.txt'}"])
    assert exit_.value.code == 2
    assert "no file or folder" in capsys.readouterr().err


def test_held_out_tokens_alone_stop_reading_early(tmp_path):
    """Analyses of a checkpoint want a few held-out windows: a large corpus of one's own is not read to its end."""
    from mi_massive.train import data

    corpus = tmp_path / "many.txt"
    corpus.write_text("\n\n".join(f"Text number {i} of many." for i in range(25_000)))
    tokenizer = data.tokenizer_of()
    full = data.corpus_tokens(tokenizer, (f"file:{corpus}",))
    few = data.corpus_tokens(tokenizer, (f"file:{corpus}",), held_out_tokens=100, cache=False)  # read, not cached
    assert few.train.numel() == 0 and 100 <= len(few.val) < len(full.val) // 2  # the first 10,000 texts were enough
    assert few.val.tolist() == full.val[:len(few.val)].tolist()


def test_token_streams_are_cached_and_a_changed_source_is_tokenized_again(tmp_path):
    from mi_massive.train import data

    corpus = tmp_path / "mine.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i}: the tide turned at {i} o'clock." for i in range(40)))
    tokenizer = data.tokenizer_of()
    first = data.corpus_tokens(tokenizer, (f"file:{corpus}",))
    folder = data._token_cache(tokenizer, (f"file:{corpus}",), 20, None)
    assert (folder / "train.i32").stat().st_size == 4 * len(first.train)

    class Refuses:  # the same vocabulary and rules, but tokenizing is an error: a second call must read the cache
        backend_tokenizer = tokenizer.backend_tokenizer
        convert_tokens_to_ids = tokenizer.convert_tokens_to_ids

        def __call__(self, *args, **kwargs):
            raise AssertionError("tokenized again")

    again = data.corpus_tokens(Refuses(), (f"file:{corpus}",))
    assert again.train.tolist() == first.train.tolist() and again.val.tolist() == first.val.tolist()
    assert again.info() == first.info() and again.train.dtype == data.TOKEN_DTYPE
    held = data.corpus_tokens(Refuses(), (f"file:{corpus}",), held_out_tokens=5)
    assert held.train.numel() == 0 and held.val.tolist() == first.val.tolist()
    with pytest.raises(AssertionError, match="tokenized again"):
        data.corpus_tokens(Refuses(), (f"file:{corpus}",), cache=False)
    corpus.write_text(corpus.read_text() + "\n\nOne more paragraph at the end.")  # a new size and time: a new cache
    with pytest.raises(AssertionError, match="tokenized again"):
        data.corpus_tokens(Refuses(), (f"file:{corpus}",))
    changed = data.corpus_tokens(tokenizer, (f"file:{corpus}",))
    assert len(changed.train) > len(first.train)
    assert data._token_cache(tokenizer, (f"file:{corpus}",), 20, None) != folder


def test_a_killed_arm_resumes_where_its_last_scan_left_it(tmp_path, monkeypatch):
    """resume=True: an arm killed after its scan at step 2 goes on from there, and ends with the records and weights
    of an arm that was never stopped; a finished arm is not retrained, and another spec is refused."""
    import dataclasses

    from safetensors.torch import load_file

    from mi_massive.train import data as train_data
    from mi_massive.train import TrainState
    from mi_massive.train.lab import STATE_FILE

    spec = dataclasses.replace(SPEC, steps=6, eval_every=2)
    kw = dict(device="cpu", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = train(("default",), spec, out_dir=tmp_path / "whole", **kw)
        windows = train_data.Batches.windows

        def killed(self, step):
            if step == 3:
                raise KeyboardInterrupt("the machine was taken back")
            return windows(self, step)

        monkeypatch.setattr(train_data.Batches, "windows", killed)
        with pytest.raises(KeyboardInterrupt):
            train(("default",), spec, out_dir=tmp_path / "cut", resume=True, **kw)
        state = TrainState.load(tmp_path / "cut" / "default" / STATE_FILE)
        assert state.step == 2 and state.optimizer is not None and len(state.rows) == 2 * spec.n_layers
        assert state.to_dataframe().step.tolist() == [0] * spec.n_layers + [2] * spec.n_layers
        assert repr(state) == "<TrainState: training state of the default arm at step 2 of 6>"
        monkeypatch.setattr(train_data.Batches, "windows", windows)
        resumed = train(("default",), spec, out_dir=tmp_path / "cut", resume=True, **kw)
    assert int(resumed.arm_info.resumed_at.iloc[0]) == 2 and int(whole.arm_info.resumed_at.iloc[0]) == 0
    cols = ["step", "layer", "val_loss", "train_loss", "ratio_pos0", "ratio_other", "n_hits"]
    a, b = whole.curves[cols], resumed.curves[cols]
    assert a.step.tolist() == b.step.tolist() == sorted(a.step.tolist()) and set(a.step) == {0, 2, 4, 6}
    assert a.equals(b), (a.compare(b) if a.shape == b.shape else (a.shape, b.shape))
    w1 = load_file(str(tmp_path / "whole" / "default" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "cut" / "default" / "model.safetensors"))
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert not list((tmp_path / "cut").rglob("*.tmp"))  # each state was written aside, then moved into place
    final = TrainState.load(tmp_path / "cut" / "default" / STATE_FILE)
    assert final.step == spec.steps and final.optimizer is None  # a finished arm keeps no optimizer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = train(("default",), spec, out_dir=tmp_path / "cut", resume=True, **kw)  # nothing left to train
        assert again.curves[cols].equals(b) and int(again.arm_info.resumed_at.iloc[0]) == spec.steps
        with pytest.raises(ValueError, match="another spec .*lr: 0.003 there, 0.001 here"):
            train(("default",), dataclasses.replace(spec, lr=1e-3), out_dir=tmp_path / "cut", resume=True, **kw)
        with pytest.raises(ValueError, match="needs an out_dir"):
            train(("default",), spec, resume=True, **kw)
