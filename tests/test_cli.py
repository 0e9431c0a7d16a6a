"""The command line: fast help, arguments checked before a model loads, one line and exit 2 / 1, no traceback."""

import subprocess
import sys
import time

import pytest

from mi_massive import cli


def _run(*argv, timeout=60):
    return subprocess.run([sys.executable, "-m", "mi_massive.cli", *argv], capture_output=True, text=True,
                          timeout=timeout)


def test_help_imports_nothing_heavy_and_answers_at_once():
    code = ("import sys, time; t = time.perf_counter(); from mi_massive import cli; "
            "p = cli.build_parser()\n"
            "for c in cli._COMMANDS:\n"
            "    try: p.parse_args([c, '--help'])\n"
            "    except SystemExit: pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'transformer_lens', 'pandas') if m in sys.modules]\n"
            "print('HEAVY', heavy, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    line = out.strip().splitlines()[-1]
    assert line.startswith("HEAVY [] "), line  # importing the package and every subcommand's help: no torch
    t0 = time.perf_counter()
    proc = _run("--help")
    assert proc.returncode == 0 and "table3" in proc.stdout
    assert time.perf_counter() - t0 < 30  # a whole interpreter start on a shared machine; what keeps it under 1 s
    # quiet is the check above (nothing heavy imported); the figures are in benchmarks/RESULTS.md


def test_every_command_is_registered_here_and_argparse_lives_only_in_cli():
    from pathlib import Path

    import mi_massive

    root = Path(mi_massive.__file__).parent
    users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if "argparse" in p.read_text())
    assert users == ["cli.py"]
    assert {"scan", "trace", "sinks", "patch", "table3", "report"} <= set(cli._COMMANDS)
    from mi_massive.corpus import CORPORA
    from mi_massive.patching import PATHS

    assert cli.CORPORA == tuple(CORPORA) and cli.PATHS == PATHS  # kept here so that --help imports nothing


def _never_load(args):
    raise AssertionError("the model was loaded before the arguments were checked")


@pytest.mark.parametrize("argv, code, says", [
    (["scan", "--file", "EMPTY"], 2, "holds no prompt"),
    (["scan", "--file", "FOLDER"], 2, "is a folder"),
    (["scan", "--file", "/nonexistent/prompts.txt"], 2, "no such file"),
    (["scan", "--threshold", "-3"], 2, "not a finite non-negative number"),
    (["scan", "-k", "0"], 2, "not a positive integer"),
    (["sinks", "--epsilon", "2"], 2, "not in (0, 1]"),
    (["table3", "--corpus", "nope"], 2, "invalid choice"),
    (["table3", "--chunks", "2.5"], 2, "not an integer"),
    (["patch", "--corruption", "nan"], 2, "not a finite number"),
    (["trace", "--prompt", " "], 2, "--prompt is empty"),
    (["scan", "no-such-model"], 2, "unknown model 'no-such-model'"),
])
def test_bad_arguments_fail_before_loading_in_one_line(argv, code, says, tmp_path, monkeypatch, capsys):
    (tmp_path / "empty.txt").write_text("\n  \n")
    argv = [str(tmp_path / "empty.txt") if a == "EMPTY" else str(tmp_path) if a == "FOLDER" else a for a in argv]
    monkeypatch.setattr("mi_massive.models.load_model", _never_load)
    try:
        got = cli.main(argv)
    except SystemExit as exc:  # argparse's own checks
        got = exc.code
    err = capsys.readouterr().err
    assert got == code and err.count("\n") == 1 and says in err and "Traceback" not in err, err


def test_layers_checked_against_the_config_before_loading(monkeypatch, capsys):
    from mi_massive.models import embedded_path

    if not (embedded_path("smollm2-135m") / "config.json").exists():
        pytest.skip("smollm2-135m is not cached here")
    monkeypatch.setattr("mi_massive.models.load_model", _never_load)
    assert cli.main(["sinks", "--layers", "99"]) == 2
    assert "--layers 99 out of range: smollm2-135m has layers 0..29" in capsys.readouterr().err


def test_device_without_cuda_is_a_bad_argument(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("mi_massive.models.load_model", _never_load)
    assert cli.main(["scan", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_a_failure_is_one_line_with_exit_1(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("the cached smollm2-135m under /x is broken (x): rebuild it with load_model('smollm2-135m', "
                           "refetch=True) or `mi-massive <command> --refetch`")

    monkeypatch.setattr(cli, "load_from_args", broken)
    assert cli.main(["scan"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--refetch" in err and "Traceback" not in err


def test_scan_prints_its_prompts_and_rule(tiny_llama, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "load_from_args", lambda args: tiny_llama)
    (tmp_path / "p.txt").write_text("hello world\n\nabc def\n")
    assert cli.main(["scan", "--file", str(tmp_path / "p.txt"), "--ratio", "500"]) == 0
    out = capsys.readouterr().out
    assert f"prompts: 2 prompt(s) from {tmp_path / 'p.txt'}" in out and "  1: abc def" in out
    assert "rule: |x| > 100 and |x| >= 500 x the layer's median |x|" in out and "MassiveActivations" in out


def test_table3_is_quick_by_default_and_full_on_request(tiny_llama, monkeypatch, capsys):
    seen = {}

    def fake_table(model, corpora, **kw):
        seen.update(kw, corpora=corpora)
        raise RuntimeError("stop here")

    monkeypatch.setattr(cli, "load_from_args", lambda args: tiny_llama)
    import mi_massive.perplexity  # noqa: F401 (the package's `perplexity` is the function of that name)

    monkeypatch.setattr(sys.modules["mi_massive.perplexity"], "bias_term_table", fake_table)
    assert cli.main(["table3"]) == 1
    err = capsys.readouterr().err
    assert seen["seq_len"] == 128 and seen["max_chunks"] == 4 and seen["n_calibration"] == 8
    assert "table3: perplexity of 2 corpus(es)" in err and "quick mode; --full" in err and "on this machine" in err
    assert cli.main(["table3", "--full", "--corpus", "lee-news"]) == 2  # the paper's 256 tokens + BOS: too long
    assert "--seq-len 256: the model's context is 256 tokens" in capsys.readouterr().err  # for the tiny model
    assert cli.main(["table3", "--full", "--corpus", "lee-news", "--seq-len", "64"]) == 1
    assert seen["seq_len"] == 64 and seen["max_chunks"] == 32 and seen["corpora"] == ("lee-news",)
