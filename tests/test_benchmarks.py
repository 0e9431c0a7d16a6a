"""The benchmark scripts run end to end (tiny sizes) and their records hold what RESULTS.md reports."""

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(*args: str) -> str:
    out = subprocess.run([sys.executable, *args], check=True, capture_output=True, text=True, cwd=BENCH.parent,
                         timeout=900)
    return out.stdout


def test_stats_micro_checks_every_variant_before_timing_it():
    lines = [json.loads(l) for l in _run(str(BENCH / "stats_micro.py"), "--device", "cpu", "--shapes", "4x5000",
                                         "--dtypes", "float32", "--repeat", "1").splitlines() if l.startswith("{")]
    assert {r["variant"] for r in lines} >= {"sort", "select"} and all(r["exact"] for r in lines)


def test_patching_script_on_the_tiny_model():
    out = _run(str(BENCH / "patching.py"))
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


def test_attribution_script_on_the_tiny_model():
    out = _run(str(BENCH / "attribution_vs_exact.py"), "tiny", "hello world, this is a test")
    rec = json.loads(out.splitlines()[-1])
    assert rec["receivers"] > 0 and rec["exact_forward_equivalents"] > 0 and rec["attribution_forward_equivalents"] > 0
    assert -1 <= rec["v_spearman"] <= 1 and 0 <= rec["top5_overlap"] <= 5


@pytest.mark.real
def test_bench_scan_and_origin_records(smollm2, tmp_path):
    out = tmp_path / "records.jsonl"
    _run(str(BENCH / "bench.py"), "--prompts", "2", "--seq", "16", "--batch-size", "2", "--skip", "patch", "load",
         "--out", str(out))
    recs = {r["figure"]: r for r in map(json.loads, out.read_text().splitlines())}
    scan = recs["scan smollm2-135m float32"]
    for key in ("time_ratio", "trunk_ratio", "bridge_ratio", "memory_ratio", "tokens_per_s"):
        assert scan[key] is not None and scan[key] > 0, key
    assert scan["date"] and scan["command"].startswith("bench.py")  # every figure says when and how
    assert recs["trace_origin with causal check"]["forward_equivalents"] > 1
    phases = json.loads(_run(str(BENCH / "origin_phases.py"), "--repeat", "1").splitlines()[-1])
    assert phases["capture_fe"] > 0.5 and phases["run_variants_fe"] > 0 and phases["probe_fe"] > 0


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
