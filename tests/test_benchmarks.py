"""The benchmark scripts run end to end on tiny sizes and the tiny model, in this process (their timings are not
checked here: they come from running the scripts, benchmarks/RESULTS.md), and their records hold what RESULTS.md
reports."""

import importlib
import json
import sys
import types
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def scripts(monkeypatch):
    """Imports a benchmark script by name; the grad mode, sys.argv and sys.path are put back afterwards."""
    monkeypatch.syspath_prepend(str(BENCH))
    grad = torch.is_grad_enabled()
    yield importlib.import_module
    torch.set_grad_enabled(grad)  # the scripts turn gradients off for the process


def test_stats_micro_checks_every_variant_before_timing_it(scripts, capsys):
    assert scripts("stats_micro").main(["--device", "cpu", "--shapes", "4x5000", "--dtypes", "float32",
                                        "--repeat", "1"]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    assert {r["variant"] for r in lines} >= {"sort", "select"} and all(r["exact"] for r in lines)


def test_patching_script_on_the_tiny_model(scripts, capsys):
    scripts("patching").main([])
    out = capsys.readouterr().out
    assert "receivers" in out and "max |diff|" in out


def test_scans_agree_compares_every_setting_and_puts_it_back(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench

    from mi_massive import detect, engine
    from mi_massive.testing import tiny_model

    model = tiny_model("llama")
    toks = torch.randint(3, 50, (4, 12), generator=torch.Generator().manual_seed(0))
    toks[:, 0] = model.tokenizer.bos_token_id
    assert bench.scans_agree(model, toks, 2, engine.settings, "cuda_stats", ("triton", "sort"))  # exact either way
    assert engine.settings.cuda_stats == "triton"
    knob, scan = types.SimpleNamespace(cut=0), detect.scan  # a setting that changes what a scan sees
    monkeypatch.setattr(detect, "scan", lambda model, toks, **kw: scan(model, toks[:, : 12 - knob.cut], **kw))
    assert bench.scans_agree(model, toks, 2, knob, "cut", (0, 0))
    assert not bench.scans_agree(model, toks, 2, knob, "cut", (0, 0, 4)) and knob.cut == 0


def test_attribution_script_on_the_tiny_model(scripts, capsys):
    scripts("attribution_vs_exact").main(["tiny", "hello world, this is a test"])
    rec = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert rec["receivers"] > 0 and rec["exact_forward_equivalents"] > 0 and rec["attribution_forward_equivalents"] > 0
    assert -1 <= rec["v_spearman"] <= 1 and 0 <= rec["top5_overlap"] <= 5


def test_bench_records_on_the_tiny_model(scripts, monkeypatch, tiny_llama, tmp_path, capsys):
    """bench.py's scan and origin figures and origin_phases.py's phases, computed end to end on the tiny model
    (which stands in for the scripts' smollm2-135m)."""
    import mi_massive

    bench, origin_phases = scripts("bench"), scripts("origin_phases")

    toks = bench.random_tokens(4, 12, tiny_llama.cfg.d_vocab, tiny_llama.tokenizer.bos_token_id, low=3)
    scan = bench.bench_scan(tiny_llama, toks, "cpu", batch_size=2, label="tiny-llama float32", repeat=1)
    for key in ("time_ratio", "trunk_ratio", "bridge_ratio", "tokens_per_s", "scan_over_trunk"):
        assert scan[key] is not None and scan[key] > 0, key
    assert scan["figure"] == "scan tiny-llama float32" and scan["tokens"] == 48 and "memory_ratio" in scan

    monkeypatch.setattr(mi_massive, "load_model", lambda name, **kw: tiny_llama)  # the scripts' smollm2-135m
    out = tmp_path / "records.jsonl"
    monkeypatch.setattr(sys, "argv", ["bench.py"])
    assert bench.main(["--skip", "scan", "patch", "load", "--out", str(out)]) == 0
    (origin,) = map(json.loads, out.read_text().splitlines())
    assert origin["figure"] == "trace_origin with causal check" and origin["forward_equivalents"] > 1
    assert origin["date"] and origin["command"].startswith("bench.py --skip")  # every figure says when and how

    import mi_massive._ablate as ab
    import mi_massive._attribution as at
    import mi_massive.origin as og

    for mod, name in ((og, "capture"), (og, "_trace"), (og, "_neuron_table"), (at, "upstream"), (ab, "probe"),
                      (ab, "run_variants")):
        monkeypatch.setattr(mod, name, getattr(mod, name))  # origin_phases wraps them in timers: put back after
    monkeypatch.setattr(sys, "argv", ["origin_phases.py", "--repeat", "1"])
    capsys.readouterr()
    origin_phases.main()
    phases = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert phases["forward_equivalents"] > 1 and phases["capture_fe"] > 0 and phases["run_variants_fe"] > 0


def test_arithmetic_floor_of_path_patching(monkeypatch, tiny_llama):
    """bench.py's arithmetic of path patching: the naive loop runs every row through the whole model, so its
    arithmetic is exactly its prompt-rows in forwards; batched rows resume after the sender, so less."""
    monkeypatch.syspath_prepend(str(BENCH))
    import bench

    from mi_massive import path_patch

    n_tokens = tiny_llama.to_tokens("hello world").shape[1]
    naive = path_patch(tiny_llama, "hello world", method="naive")
    rec = bench.arithmetic_floor(tiny_llama, naive, n_tokens, "cpu", forward_s=1.0)
    assert rec["arithmetic_forwards"] == pytest.approx(naive.forward_rows)
    assert rec["gemm_flops"] > 0 and rec["gemm_floor_forward_equivalents"] > 0
    batched = path_patch(tiny_llama, "hello world")
    assert bench.arithmetic_floor(tiny_llama, batched, n_tokens, "cpu", 1.0)["arithmetic_forwards"] < batched.forward_rows


def test_train_sweep_trains_a_job_and_analyses_its_checkpoint(scripts, monkeypatch, tmp_path):
    """A sweep job (here the 24-block, no-weight-decay condition, shrunk by the trailing arguments) trains in its own
    `mi-massive train` process; --analyses then opens its checkpoint with load_model and runs the package on it."""
    job = "gpt2_text_d512_lr2e-3_l24_wd0"
    monkeypatch.setattr(sys, "argv", ["train_sweep.py", "--out", str(tmp_path), "--minutes", "5", "--eval-every", "2",
                                      "--only", job, "--analyses", "--", "--data", "copy", "--d-model", "32",
                                      "--n-layers", "2", "--n-heads", "2", "--n-ctx", "16", "--batch-size", "2",
                                      "--steps", "2", "--device", "cpu"])
    assert scripts("train_sweep").main() == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    rec = summary[job]
    assert rec["arm"] == "default" and [s["step"] for s in rec["scans"]] == [0, 2]
    assert rec["arm_info"]["n_params"] < 100_000  # the trailing arguments won over the job's
    analyses = json.loads((tmp_path / job / "analyses.json").read_text())
    assert analyses == rec["analyses"]
    assert analyses["bridge_attention"] == "JointQKVAttentionBridge"  # GPT-2 blocks, opened by load_model
    assert analyses["find_massive_activations"].startswith("<MassiveActivations") and "AttentionSinks" in \
        analyses["attention_sinks"]


def test_text_subsets_keep_the_lab_held_out_text(scripts, tmp_path):
    """benchmarks/text_subsets.py: a file of 1/k of the training texts, read by the lab (`file:PATH`), holds out
    exactly the mix's held-out texts, first ones first; for k = 1 its training stream is the mix's own."""
    import gzip

    from mi_massive.train import data

    ts = scripts("text_subsets")
    texts = [f"text number {i} of a small corpus." for i in range(95)]
    train = [t for i, t in enumerate(texts) if not data.is_held_out(i)]
    held = [t for i, t in enumerate(texts) if data.is_held_out(i)]
    tok = data.tokenizer_of()
    sep = tok.convert_tokens_to_ids("<|endoftext|>")

    def stream(ts_: list[str]) -> list[int]:
        return [i for t in ts_ for i in [*tok(t, add_special_tokens=False)["input_ids"], sep]]

    for k in (1, 4):
        path = tmp_path / f"mix_1of{k}.jsonl.gz"
        with gzip.open(path, "wt") as fh:
            fh.writelines(json.dumps({"text": t}) + "\n" for t in ts.interleave(train[::k], held))
        got = data.corpus_tokens(tok, (f"file:{path}",), cache=False)
        assert got.train.tolist() == stream(train[::k])
        n_held = len(ts.interleave(train[::k], held)) - len(train[::k])
        assert n_held == (len(train[::k]) + n_held) // data.HELD_OUT_EVERY and got.val.tolist() == stream(held[:n_held])
    assert n_held < len(held)  # the smaller file holds out fewer texts: the first ones
