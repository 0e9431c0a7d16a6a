"""Data parallelism: the corpus-level analyses under `torchrun --nproc-per-node 2` (gloo, two CPU processes) give
the single-process result over the same inputs: hits identical, statistics to 1e-6 relative; uneven shards
(3 prompts over 2 ranks) and a rank with no input (1 prompt over 2 ranks) included."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mi_massive import _dist

WORKER = Path(__file__).with_name("dist_worker.py")
EXACT = ("hits", "str_tokens", "n_prompts", "stats_dims", "stats_count", "sink_positions")
CLOSE = ("hit_values", "profile_top", "profile_median", "stats_mean", "stats_std", "ppl_nll", "ppl", "sink_mass",
         "alpha", "k_norm_sink", "k_cos_other")


def _run(model: str, n: int, out: Path, nproc: int) -> dict:
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, *launcher, str(WORKER), model, str(n), str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"worker failed ({nproc} process(es)):\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text())


def _compare(one: dict, two: dict) -> None:
    assert one["world"] == 1 and two["world"] == 2
    for key in EXACT:
        assert one[key] == two[key], key
    for key in CLOSE:
        a, b = np.asarray(one[key], dtype=float), np.asarray(two[key], dtype=float)
        assert a.shape == b.shape, key
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-9 * max(1.0, float(np.abs(a).max(initial=0))),
                                   err_msg=key)


def test_shards_are_contiguous_uneven_and_may_be_empty(monkeypatch):
    monkeypatch.setattr(_dist, "world", lambda: (rank, 2))
    shards = []
    for rank in (0, 1):
        shards.append(list(_dist.shard(3)))
    assert shards == [[0, 1], [2]]
    for rank, want in ((0, [0]), (1, [])):
        assert list(_dist.shard(1)) == want
    monkeypatch.undo()
    assert _dist.world() == (0, 1) and list(_dist.shard(4)) == [0, 1, 2, 3]


@pytest.mark.slow
@pytest.mark.parametrize("n", [3, 1], ids=["uneven", "empty-rank"])
def test_two_ranks_equal_one_process_tiny(tmp_path, n):
    one = _run("tiny-llama", n, tmp_path / "one.json", 1)
    two = _run("tiny-llama", n, tmp_path / "two.json", 2)
    assert one["hits"]["dim"], "the planted dimension must be found"
    _compare(one, two)


@pytest.mark.slow
@pytest.mark.real
def test_two_ranks_equal_one_process_smollm2(tmp_path, smollm2):
    one = _run("smollm2-135m", 3, tmp_path / "one.json", 1)
    two = _run("smollm2-135m", 3, tmp_path / "two.json", 2)
    assert 507 in one["hits"]["dim"]
    _compare(one, two)


@pytest.mark.slow
@pytest.mark.real
def test_cli_scan_of_a_corpus_under_torchrun_prints_once_what_one_process_prints(smollm2):
    cmd = ["-m", "mi_massive.cli", "scan", "--corpus", "lee-news", "-n", "5"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, *cmd], env=env, capture_output=True, text=True, timeout=900)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *cmd],
                         env=env, capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    assert "5 text(s) of the corpus lee-news" in one.stdout and "507" in one.stdout
    assert two.stdout == one.stdout  # rank 0 alone prints, and prints the merged result


def test_exit_program_raises_system_exit_in_one_process():
    with pytest.raises(SystemExit) as info:
        _dist.exit_program(3)
    assert info.value.code == 3
