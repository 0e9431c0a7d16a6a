"""The scan's Triton statistics (`_select.median_topk`) equal the sort's: lower median, top-kk values, indices.

On a machine without CUDA the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set before Triton is
imported, hence a subprocess); with CUDA they also run compiled, on scan-sized rows, and inside a scan."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _rows(n: int, seed: int) -> torch.Tensor:
    """Residual-like rows: Gaussian, massive entries of both signs, exact ties (also among the top), a row of
    equal values, inf, -inf and NaN (fp16 overflow), and a row whose median is inf."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, n, generator=g)
    x[:, torch.randint(0, n, (5,), generator=g)] *= 3000.0
    x[0, 3], x[1, 4] = 6e4, -6e4
    if n >= 128:
        x[:, 64:128] = x[:, :64]
    x[2] = 1.0
    x[3, 1], x[3, 3], x[3, 5] = float("inf"), float("nan"), float("-inf")
    x[4, : n // 2 + 1] = float("inf")
    return x


def check_all(device: str, sizes=(7, 2049, 4095, 4097, 9001)) -> int:  # around bf16's and fp32's blocks
    """Every dtype, row length (within one program's block, across blocks) and kk against `_stats.sorted_stats`,
    with chunks counted by histograms, by atomics or (as shipped) each as it suits, and the digits found so far
    resolved between rounds (as shipped) or in every program."""
    from mi_massive.engine import _select

    cases, shipped = 0, (_select._SPARSE, _select._RESOLVE)
    for dtype, sparse, resolve in ((torch.float32, -1, True), (torch.bfloat16, 1 << 20, False),
                                   (torch.float16, shipped[0], shipped[1])):
        # every chunk counted by a histogram; every one by atomics; the mix. The digits found so far resolved
        # between rounds, or derived in every program
        _select._SPARSE, _select._RESOLVE = sparse, resolve
        try:
            cases += _check_dtype(device, dtype, sizes)
        finally:
            _select._SPARSE, _select._RESOLVE = shipped
    return cases


def _check_dtype(device: str, dtype: torch.dtype, sizes) -> int:
    from mi_massive.engine import _select
    from mi_massive.engine._stats import sorted_stats

    cases = 0
    for n in sizes:
        x = _rows(n, n).to(device=device, dtype=dtype)
        a = x.abs()
        for kk in sorted({1, min(7, n), min(64, n), n}):
            med, topv, topi, signed = _select.median_topk(x, kk)
            rmed, rtopv, _ = sorted_stats(a, kk)
            same = dict(rtol=0, atol=0, equal_nan=True)
            assert torch.allclose(med, rmed, **same), (dtype, n, kk, "median")
            assert torch.allclose(topv, rtopv, **same), (dtype, n, kk, "top values")
            assert torch.allclose(a.gather(1, topi), topv, **same), (dtype, n, kk, "indices")
            assert torch.allclose(signed, x.gather(1, topi), **same), (dtype, n, kk, "signed")
            assert all(len(set(r.tolist())) == kk for r in topi.cpu()), (dtype, n, kk, "repeated index")
            cases += 1
    return cases


def test_triton_statistics_equal_the_sort_in_the_interpreter():
    pytest.importorskip("triton")
    code = f"import runpy; print(runpy.run_path({str(Path(__file__))!r})['check_all']('cpu'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TRITON_INTERPRET": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[-1]) == 3 * (2 + 4 * 4)  # every case ran (n=7: kk 1 and 7 only)


def test_shifts_cover_the_key_bits():
    from mi_massive.engine._select import DIGIT, _shifts

    for width in (15, 31):
        s = _shifts(width)
        assert s[-1] == 0 and all(0 < hi - lo <= DIGIT for hi, lo in zip([width, *s], s))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_triton_statistics_equal_the_sort_on_cuda():
    pytest.importorskip("triton")
    assert check_all("cuda", sizes=(7, 2049, 4095, 4097, 9001, 147_456)) == 3 * (2 + 5 * 4)


@cuda
def test_scan_with_triton_statistics_equals_the_sorted_scan(monkeypatch):
    pytest.importorskip("triton")
    from mi_massive import engine, find_massive_activations, layer_profile
    from mi_massive.testing import tiny_model

    model = tiny_model("llama")  # on CUDA: TransformerLens's default device where there is one
    assert next(model.parameters()).is_cuda and str(model.cfg.device).startswith("cuda")
    prompts = ["hello world, this is a test", "abc", "massive activations sit at the first token"]
    got = {}
    for path, group in (("triton", 1 << 28), ("sort", 1 << 28), ("triton", 1)):  # all layers at once, or one by one
        with engine.configure(cuda_stats=path, group_bytes=group):
            got[path, group] = (find_massive_activations(model, prompts).to_dataframe(),
                                layer_profile(model, prompts))
    (h, p), *others = got.values()
    assert set(h.dim) == {5} and all(h.equals(h2) for h2, _ in others)
    assert all(torch.equal(p.top, p2.top) and torch.equal(p.median, p2.median) for _, p2 in others)


@cuda
def test_a_failing_triton_falls_back_to_the_sort_once_with_a_warning(monkeypatch):
    from mi_massive.engine import _select, _settings, _stats

    def broken(flat, kk):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(_select, "median_topk", broken)
    monkeypatch.setattr(_settings, "_reported", set())
    x = _rows(5000, 0).cuda()
    choice = _stats.Choice()
    with pytest.warns(RuntimeWarning, match="sorting instead"):
        med, topv, _, _ = _stats.layer_stats(x, 8, choice)
    assert choice.path == "sort" and torch.equal(med, _stats.sorted_stats(x.abs(), 8)[0])
    assert _settings.settings.cuda_stats == "triton"  # for that call only: the next call tries Triton again


def test_triton_failures_fall_back_once_but_out_of_memory_is_raised(monkeypatch):
    """The decision itself, on any machine: a Triton that fails warns once and hands the rest of that call to the
    sort; running out of memory is raised (the sort would need more), and the setting stays either way."""
    import warnings

    from mi_massive.engine import _select, _settings, _stats

    def failing(err):
        def run(flat, kk):
            raise err
        return run

    x = _rows(300, 0)
    monkeypatch.setattr(_settings, "_reported", set())
    monkeypatch.setattr(_select, "median_topk", failing(torch.OutOfMemoryError("CUDA out of memory")))
    choice = _stats.Choice()
    with pytest.raises(torch.OutOfMemoryError):
        _stats.triton_stats(x, 8, choice)
    assert choice.path == "triton"
    monkeypatch.setattr(_select, "median_topk", failing(RuntimeError("no compiler here")))
    with pytest.warns(RuntimeWarning, match="failed \\(RuntimeError: no compiler here\\); sorting instead"):
        assert _stats.triton_stats(x, 8, choice) is None
    assert choice.path == "sort"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once
        assert _stats.triton_stats(x, 8, _stats.Choice()) is None
    assert _settings.settings.cuda_stats == "triton"  # never flipped for the process
