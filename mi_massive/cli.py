"""The `mi-massive` command line: one subcommand per analysis, all of them here (the analyses know no shell).

    mi-massive scan                      # massive activations and layer profile of smollm2-135m
    mi-massive scan gemma3-270m --prompt "Summer is warm."

Nothing heavy is imported before a command runs, so `--help` answers at once. Arguments are checked before a
model loads; a bad one is one line on stderr and exit code 2, a failure one line and exit code 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._types import HookedModel

RULE = "|x| > {threshold:g} and |x| >= {ratio:g} x the layer's median |x| (per prompt, every block output)"
PATHS = ("k", "v", "q", "direct")  # path patching's receivers (patching.PATHS, kept here so --help imports nothing)
# corpus.CORPORA's names (a test checks)
CORPORA = ("lee-news", "wiki-en", "wikitext-2", "wikitext-103", "c4", "linux-doc")
TABLE3_QUICK = {"seq_len": 128, "chunks": 4, "calibration": 8}  # finishes in minutes on a 2-core CPU
TABLE3_FULL = {"seq_len": 256, "chunks": 32, "calibration": 32}  # the paper's size


class BadArgument(ValueError):
    """An argument the user can correct (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one clear line, exit 2
        sys.stderr.write(f"mi-massive: error: {message}\n")
        raise SystemExit(2)


# --- argument types: checked while parsing -----------------------------------------------------------------

def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= low."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is not a positive integer" if low == 1 else
                                             f"{value} is below {low}")
        return value

    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a finite non-negative number")
    return value


def _probability(text: str) -> float:
    value = _non_negative_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]")
    return value


# --- shared arguments -----------------------------------------------------------------------------------------

def add_model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="smollm2-135m",
                   help="short name (smollm2-135m, gemma3-270m), HF id or local dir (default: smollm2-135m)")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cuda if present, else cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--refetch", action="store_true", help="rebuild an embedded model's cache (a broken cache)")
    p.add_argument("--verbose", action="store_true", help="show transformers' loading messages and bars")


def add_prompt_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", action="append", help="a prompt (repeatable; default: four built-in prompts)")
    p.add_argument("--file", help="a UTF-8 text file, one prompt per line")


def _check_device(device: str | None) -> None:
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise BadArgument(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BadArgument(f"--device {device}: this machine has no CUDA device; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BadArgument(f"--device {device}: this machine has CUDA devices 0..{torch.cuda.device_count() - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise BadArgument(f"--device {device}: MPS is not available on this machine; use --device cpu")


def _read_prompt_file(file: str) -> list[str]:
    path = Path(file).expanduser()
    if not path.exists():
        raise BadArgument(f"--file {file}: no such file")
    if path.is_dir():
        raise BadArgument(f"--file {file}: is a folder, not a text file with one prompt per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise BadArgument(f"--file {file}: is not UTF-8 text") from None
    except OSError as exc:
        raise BadArgument(f"--file {file}: cannot be read ({exc.strerror})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise BadArgument(f"--file {file}: holds no prompt (every line is blank)")
    return prompts


def prompts_from_args(args: argparse.Namespace) -> list[str]:
    """The prompts of --prompt and --file, else the built-in ones."""
    prompts = list(getattr(args, "prompt", None) or [])
    if getattr(args, "file", None):
        prompts += _read_prompt_file(args.file)
    if getattr(args, "n", None) is not None and not getattr(args, "scan_corpus", None):
        raise BadArgument("-n counts the texts of --corpus: give --corpus too")
    if getattr(args, "scan_corpus", None):
        if prompts:
            raise BadArgument("--corpus: give either a corpus or --prompt/--file, not both")
        from .corpus import load_corpus

        return load_corpus(args.scan_corpus, n=args.n)
    if any(not p.strip() for p in prompts):
        raise BadArgument("--prompt: a prompt is empty")
    from ._inputs import DEFAULT_PROMPTS

    return prompts or list(DEFAULT_PROMPTS)


def _prompt_source(args: argparse.Namespace, prompts: list[str]) -> str:
    if getattr(args, "scan_corpus", None):
        return f"{len(prompts)} text(s) of the corpus {args.scan_corpus}"
    if getattr(args, "file", None):
        return f"{len(prompts)} prompt(s) from {'--prompt and ' if args.prompt else ''}{args.file}"
    return f"{len(prompts)} prompt(s) from {'--prompt' if getattr(args, 'prompt', None) else 'the built-in set'}"


def _config_of(name: str) -> dict | None:
    """The model's config.json without loading it (an embedded model's cache, a local dir, the HF cache); None
    where it is not at hand."""
    import json

    candidates = []
    try:
        from .models import EMBEDDED, embedded_path

        if name in EMBEDDED:
            candidates.append(embedded_path(name) / "config.json")
    except Exception:  # noqa: BLE001 (a hint only)
        return None
    if name not in EMBEDDED and Path(name).expanduser().is_dir():
        candidates.append(Path(name).expanduser() / "config.json")
    elif "/" in name and not Path(name).exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(name, "config.json")
            if isinstance(found, str):
                candidates.append(Path(found))
        except Exception:  # noqa: BLE001
            pass
    for path in candidates:
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        return config.get("text_config", config)
    return None


def _check_layers(args: argparse.Namespace, layers: Sequence[int] | None, flag: str) -> None:
    """Layers against the model's config, where it can be read without loading the model."""
    if not layers:
        return
    config = _config_of(args.model) or {}
    n = config.get("num_hidden_layers") or config.get("n_layer")
    bad = [l for l in layers if isinstance(n, int) and not -n <= l < n]
    if bad:
        raise BadArgument(f"{flag} {bad[0]} out of range: {args.model} has layers 0..{n - 1}")


def _check_model_name(name: str) -> None:
    from .models import EMBEDDED

    if name in EMBEDDED or "/" in name or Path(name).expanduser().is_dir():
        return
    raise BadArgument(f"unknown model {name!r}: known short names are {', '.join(EMBEDDED)}; "
                      "or give a Hugging Face id (org/name) or a local directory")


def load_from_args(args: argparse.Namespace):
    """The model the arguments name (checked first), loaded quietly unless --verbose."""
    import torch

    from .models import load_model

    _check_model_name(args.model)
    _note(f"loading {args.model} ({args.dtype}) ...")
    t0 = time.perf_counter()
    model = load_model(args.model, device=args.device, dtype=getattr(torch, args.dtype),
                       refetch=getattr(args, "refetch", False), verbose=getattr(args, "verbose", False))
    _note(f"loaded {args.model} in {time.perf_counter() - t0:.1f} s ({model.cfg.n_layers} layers, "
          f"d_model {model.cfg.d_model}, on {model.cfg.device})")
    return model


def _note(message: str) -> None:
    """Progress talk goes to stderr, so stdout holds the results alone."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _forward_seconds(model: HookedModel, n_tokens: int) -> float:
    """Seconds for forward passes over `n_tokens` tokens in all, from a timed pass of 64 tokens on this machine."""
    import torch

    toks = torch.zeros(1, 64, dtype=torch.long, device=model.cfg.device)
    times = []
    with torch.inference_mode():
        model(toks[:, :8], return_type=None)  # warm-up
        for _ in range(3):  # the least of three: a busy machine's stalls are not the command's cost
            t0 = time.perf_counter()
            model(toks, return_type=None)
            times.append(time.perf_counter() - t0)
    return min(times) * n_tokens / 64


def _about(seconds: float) -> str:
    if seconds < 60:
        return f"about {max(5, round(seconds / 5) * 5):.0f} s"
    return f"about {seconds / 60:.0f} min" if seconds < 5400 else f"about {seconds / 3600:.1f} h"


def _announce(what: str, model: HookedModel, forward_tokens: int) -> None:
    _note(f"{what} ({_about(_forward_seconds(model, forward_tokens))} on this machine)")


# --- scan ------------------------------------------------------------------------------------------------------

def _scan(args: argparse.Namespace) -> int:
    prompts = prompts_from_args(args)
    model = load_from_args(args)
    import pandas as pd

    from .detect import scan

    print(f"prompts: {_prompt_source(args, prompts)}")
    for i, p in enumerate(prompts[:8]):
        print(f"  {i}: {p if len(p) <= 100 else p[:97] + '...'}")
    if len(prompts) > 8:
        print(f"  ... and {len(prompts) - 8} more")
    print("rule: " + RULE.format(threshold=args.threshold, ratio=args.ratio))
    found, profile = scan(model, prompts, threshold=args.threshold, ratio=args.ratio, k=args.k,
                          progress=True if args.progress else None)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(found)
        print(found.summary().to_string(index=False) if len(found) else "(no hits)")
        print()
        print(profile)
        print(profile.to_dataframe().to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def add_scan_command(sub) -> None:
    p = sub.add_parser("scan", help="find massive activations and print the layer profile")
    add_model_argument(p)
    add_prompt_arguments(p)
    p.add_argument("--threshold", type=_non_negative_float, default=100.0, help="|x| must exceed this (default 100)")
    p.add_argument("--ratio", type=_non_negative_float, default=1000.0,
                   help="|x| >= ratio x layer median (default 1000)")
    p.add_argument("-k", type=_positive_int, default=3, help="top-k magnitudes in the profile (default 3)")
    p.add_argument("--corpus", dest="scan_corpus", choices=CORPORA,
                   help="scan the texts of this corpus instead of prompts (under torchrun, each rank its shard)")
    p.add_argument("-n", type=_positive_int, default=None, help="with --corpus: its first n texts (default: all)")
    p.add_argument("--progress", action="store_true", help="always show a progress bar")
    p.set_defaults(func=_scan)


# --- trace -----------------------------------------------------------------------------------------------------

def _trace_cli(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        raise BadArgument("--prompt is empty")
    _check_layers(args, [args.layer] if args.layer is not None else None, "--layer")
    model = load_from_args(args)
    from .origin import trace_origin

    n_tok = len(model.to_tokens(args.prompt)[0])
    _announce(f"trace: which block, neurons and weight write the massive activation of a {n_tok}-token prompt"
              + ("" if args.no_ablate else f", with a causal check of {args.top_k} neurons"), model,
              n_tok * (2 if args.no_ablate else 4 + args.top_k))
    origin = trace_origin(model, args.prompt, layer=args.layer, pos=args.pos, dim=args.dim, top_k=args.top_k,
                          ablate=False if args.no_ablate else args.ablate)
    fmt = lambda v: f"{v:.4g}"  # noqa: E731
    print(origin)
    if origin.found:
        print("\nper block (value after the block):")
        print(origin.by_layer().to_string(index=False, float_format=fmt))
        print(f"\ntop neurons of block {origin.writer_layer}:")
        print(origin.neurons.to_string(index=False, float_format=fmt))
        print(f"\nsuper weight: {origin.super_weight}")
        if origin.super_weight is not None:
            print(f"\nwhat makes neuron {origin.super_weight.col} fire (largest parts):")
            up = origin.upstream
            print(up.reindex(up.pre.abs().sort_values(ascending=False).index).head(8).to_string(index=False,
                                                                                              float_format=fmt))
        if len(origin.causal):
            print("\ncausal check:")
            print(origin.causal.to_string(index=False, float_format=fmt))
    return 0


def add_trace_command(sub) -> None:
    p = sub.add_parser("trace", help="trace which block, neurons and weight write a massive activation")
    add_model_argument(p)
    p.add_argument("--prompt", default="Summer is warm. Winter is cold.", help="the prompt to trace")
    p.add_argument("--layer", type=int, help="block output to trace (default: first layer of the largest massive value)")
    p.add_argument("--pos", type=int, help="token position (default: that of the largest massive value)")
    p.add_argument("--dim", type=_non_negative_int, help="residual dimension (default: that of the largest massive value)")
    p.add_argument("--top-k", type=_positive_int, default=5, help="neurons to report and ablate (default 5)")
    p.add_argument("--ablate", default="zero", choices=["zero", "mean", "both"], help="neuron ablation (default zero)")
    p.add_argument("--no-ablate", action="store_true", help="skip the causal check (one forward pass)")
    p.set_defaults(func=_trace_cli)


# --- sinks -----------------------------------------------------------------------------------------------------

def _sinks(args: argparse.Namespace) -> int:
    prompts = prompts_from_args(args)
    _check_layers(args, args.layers, "--layers")
    model = load_from_args(args)
    import pandas as pd

    from .attention import attention_sinks, implicit_bias

    n_tok = sum(len(model.to_tokens(p)[0]) for p in prompts)
    _announce(f"sinks: attention sinks and the implicit attention bias over {_prompt_source(args, prompts)}"
              + ("" if args.no_swap else ", with the bias swap"), model, n_tok * (6 if args.no_swap else 8))
    sinks = attention_sinks(model, prompts, epsilon=args.epsilon, progress=True)
    bias = implicit_bias(model, prompts, layers=args.layers, swap=not args.no_swap, progress=True)
    per_layer = bias.to_dataframe().groupby("layer")[["bias_norm", "rest_norm", "constancy", "spread"]].mean()
    with pd.option_context("display.width", 160):
        print(sinks)
        print(sinks.by_layer().join(per_layer, on="layer").to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        print()
        print(bias)
        if not args.no_swap:
            print(bias.swap.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def add_sinks_command(sub: Any) -> None:
    p = sub.add_parser("sinks", help="attention sinks, the implicit attention bias and the bias swap")
    add_model_argument(p)
    add_prompt_arguments(p)
    p.add_argument("--layers", type=int, nargs="+",
                   help="layers for the implicit bias (default: the blocks after the massive activation appears)")
    p.add_argument("--epsilon", type=_probability, default=0.3, help="alpha threshold of a sink head (default 0.3)")
    p.add_argument("--no-swap", action="store_true", help="skip the bias-swap and removal losses")
    p.set_defaults(func=_sinks)


# --- patch -----------------------------------------------------------------------------------------------------

def _corruption(text: str) -> str | float:
    if text == "zero":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'zero' nor a number") from None
    if value != value or abs(value) == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def _patch_cli(args: argparse.Namespace) -> int:
    prompts = prompts_from_args(args)
    _check_layers(args, args.layers, "--layers")
    model = load_from_args(args)
    import pandas as pd

    from .patching import path_patch

    n_tok = sum(len(model.to_tokens(p)[0]) for p in prompts)
    receivers = model.cfg.n_layers * model.cfg.n_heads * len(args.paths)
    _announce(f"patch: path patching of the massive activation into {', '.join(args.paths)} of up to {receivers} "
              f"receivers over {_prompt_source(args, prompts)}", model, n_tok * (2 + receivers // 6))
    pp = path_patch(model, prompts, corruption=args.corruption, receivers=args.paths, layers=args.layers,
                    batch_size=args.batch_size, progress=True)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(pp)
        print(pp.summary().to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        df = pp.to_dataframe()
        print(f"\ntop {args.top} receivers by |effect|:")
        print(df.loc[df.effect.abs().sort_values(ascending=False).index[: args.top]].to_string(index=False))
    return 0


def add_patch_command(sub: Any) -> None:
    p = sub.add_parser("patch", help="path-patch the massive activation into K, V, Q of later heads and the logits")
    add_model_argument(p)
    add_prompt_arguments(p)
    p.add_argument("--corruption", default="zero", type=_corruption,
                   help="'zero' or a number to set the massive entries to")
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS, help="receiver paths (default: all)")
    p.add_argument("--layers", nargs="+", type=int, default=None, help="receiver layers (default: all later blocks)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="rows per forward pass (default 32)")
    p.add_argument("--top", type=_positive_int, default=10, help="receivers to list (default 10)")
    p.set_defaults(func=_patch_cli)


# --- table3 ----------------------------------------------------------------------------------------------------

def _table3(args: argparse.Namespace) -> int:
    size = TABLE3_FULL if args.full else TABLE3_QUICK
    seq_len, chunks, calibration = (size[k] if getattr(args, a) is None else getattr(args, a)
                                    for k, a in (("seq_len", "seq_len"), ("chunks", "chunks"),
                                                 ("calibration", "calibration")))
    corpora = tuple(args.corpus or ("wiki-en", "lee-news"))
    from .corpus import CORPORA

    unknown = [c for c in corpora if c not in CORPORA]
    if unknown:
        raise BadArgument(f"--corpus {unknown[0]!r}: known corpora are {', '.join(CORPORA)}")
    if seq_len < 2:
        raise BadArgument(f"--seq-len {seq_len}: give at least 2 tokens per chunk")
    model = load_from_args(args)
    if seq_len + 1 > model.cfg.n_ctx:
        raise BadArgument(f"--seq-len {seq_len}: the model's context is {model.cfg.n_ctx} tokens")
    from .perplexity import bias_term_table

    mode = "the paper's full size" if args.full else "quick mode; --full for the paper's size"
    _announce(f"table3: perplexity of {len(corpora)} corpus(es) ({', '.join(corpora)}), {chunks} chunks of "
              f"{seq_len} tokens each under 4 settings (original, zero, mean, control), means from "
              f"{calibration} held-apart texts ({mode})", model,
              len(corpora) * (4 * chunks * (seq_len + 1) + 3 * calibration * 64))
    result = bias_term_table(model, corpora, seq_len=seq_len, max_chunks=chunks, n_calibration=calibration,
                             prepend_bos=args.bos, progress=True)
    print(result)
    print(result.to_dataframe().to_string(float_format=lambda v: f"{v:.4g}"))
    for corpus, described in zip(result.corpora, result.interventions):
        for column, text in zip(result.columns[1:], described[1:]):
            print(f"  {corpus} {column}: {text}")
    return 0


def add_table3_command(sub) -> None:
    q, f = TABLE3_QUICK, TABLE3_FULL
    p = sub.add_parser("table3", help="perplexity with massive activations set to zero / mean, and a control")
    add_model_argument(p)
    p.add_argument("--corpus", action="append", choices=CORPORA,
                   help="corpus name (repeatable; default: wiki-en and lee-news)")
    p.add_argument("--full", action="store_true",
                   help=f"the paper's size: {f['chunks']} chunks of {f['seq_len']} tokens, {f['calibration']} "
                        f"calibration texts (default: quick, {q['chunks']} chunks of {q['seq_len']}, "
                        f"{q['calibration']} texts)")
    p.add_argument("--seq-len", type=_positive_int, default=None, help="text tokens per chunk (overrides the size)")
    p.add_argument("--chunks", type=_positive_int, default=None, help="chunks scored per corpus (overrides the size)")
    p.add_argument("--calibration", type=_positive_int, default=None,
                   help="texts held apart for the means (overrides the size)")
    p.add_argument("--bos", action=argparse.BooleanOptionalAction, default=None,
                   help="prepend BOS to each chunk (default: the model's default)")
    p.add_argument("--progress", action="store_true", help="(progress bars are always shown)")
    p.set_defaults(func=_table3)


# --- report ----------------------------------------------------------------------------------------------------

def _report(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if not out.parent.exists():
        raise RuntimeError(f"cannot write {str(out)!r}: no such directory {str(out.parent)!r}")
    if out.is_dir():
        raise BadArgument(f"-o {str(out)!r} is a folder: give a file name")
    prompts = prompts_from_args(args)
    _check_layers(args, [args.layer] if args.layer is not None else None, "--layer")
    model = load_from_args(args)
    from .report import write_report

    mode = "the paper's full size" if args.full else "quick mode; --full for the paper's size"
    _note(f"report: every analysis of {_prompt_source(args, prompts)} into {out} ({mode})")  # write_report estimates
    write_report(model, out, inputs=prompts, layer=args.layer, full=args.full, progress=True)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def add_report_command(sub: Any) -> None:
    p = sub.add_parser("report", help="write one self-contained HTML report of every finding (works offline)")
    add_model_argument(p)
    add_prompt_arguments(p)
    p.add_argument("-o", "--output", default="report.html", help="the HTML file to write (default report.html)")
    p.add_argument("--layer", type=int, default=None,
                   help="block shown in the 3-D and attention views (default: the one after massive values appear)")
    p.add_argument("--full", action="store_true", help="the paper's size: every prompt path-patched, Table 3 of 32 "
                   "chunks of 256 tokens (default: quick, about 3 minutes or less on a 2-core CPU)")
    p.set_defaults(func=_report)


# --- train -----------------------------------------------------------------------------------------------------

TRAIN_ARCHS = ("llama", "gpt2")  # train.modeling.ARCHS (a test checks)
TRAIN_ARMS = ("default", "sink_token", "attn_bias", "softmax1", "sigmoid", "gated")  # train.modeling.VARIANTS (a test checks)
TRAIN_SYNTHETIC = ("copy", "backcopy")  # train.data.SYNTHETIC (a test checks)
TRAIN_SYNTHETIC_VOCAB = 515  # train.data.SYNTHETIC_VOCAB: their token ids are below it (a test checks)
TRAIN_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # lab.COMPILE_MODES
TRAIN_DATA = ("wiki-en+lee-news", "wiki-en", "lee-news", "linux-doc", "wiki-en+lee-news+linux-doc", "wikitext-103",
              *TRAIN_SYNTHETIC)


TRAIN_FILE = "file:"  # train.data.FILE: text of your own (a test checks)


def _train_data(value: str) -> str:
    if value in TRAIN_DATA:
        return value
    path = value[len(TRAIN_FILE):] if value.startswith(TRAIN_FILE) else ""
    if path:
        if not Path(path).expanduser().exists():
            raise argparse.ArgumentTypeError(f"no file or folder at {path!r}")
        return value
    raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {', '.join(TRAIN_DATA)}, "
                                     f"or {TRAIN_FILE}PATH)")


def _train(args: argparse.Namespace) -> int:
    if args.resume and not args.out:
        raise BadArgument("--resume keeps the training state in --out: give --out")
    if args.eval_every > args.steps:
        raise BadArgument(f"--eval-every {args.eval_every} is more than --steps {args.steps}")
    if args.d_model % args.n_heads:
        raise BadArgument(f"--d-model {args.d_model} is not a multiple of --n-heads {args.n_heads}")
    from .train.lab import LabSpec, train

    spec = LabSpec(d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads, n_ctx=args.n_ctx,
                   batch_size=args.batch_size, steps=args.steps, eval_every=args.eval_every, warmup=args.warmup,
                   lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, data=args.data,
                   tie_embeddings=not args.untied, arch=args.arch,
                   vocab_size=TRAIN_SYNTHETIC_VOCAB if args.data in TRAIN_SYNTHETIC else None)
    run = train(tuple(args.arms), spec, out_dir=args.out, device=args.device,
                compile=args.compile_mode or args.compile, amp=args.amp,
                max_seconds=None if args.max_minutes is None else 60 * args.max_minutes, resume=args.resume)
    print(run)
    cols = ["arm", "step", "val_loss", "max_ratio_pos0", "max_ratio_other", "n_hits", "fixed_pos_layers",
            "fixed_pos", "first_token_mass", "bias_mass", "tokens_per_s", "mfu"]
    print(run.final()[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        run.to_json(Path(args.out) / f"run_{'_'.join(args.arms)}.json")
    return 0


def add_train_command(sub: Any) -> None:
    p = sub.add_parser("train", help="train small LMs from scratch, one per attention variant, and watch massive "
                                     "activations emerge")
    p.add_argument("--arms", nargs="+", default=["default", "sink_token", "attn_bias", "softmax1", "gated"],
                   choices=TRAIN_ARMS, help="attention variants, one model each (default: all but sigmoid)")
    p.add_argument("--data", default="wiki-en+lee-news", type=_train_data, metavar="DATA",
                   help=f"token data: {', '.join(TRAIN_DATA)}, or {TRAIN_FILE}PATH, text of your own (.jsonl with a "
                        f"'text' per line, .txt with blank lines between documents, .gz of either, or a folder of "
                        f"them; default: offline English text)")
    for name, default, what in (("d-model", 256, "residual width"), ("n-layers", 8, "blocks"),
                                ("n-heads", 4, "heads per block"), ("n-ctx", 128, "tokens per window"),
                                ("batch-size", 32, "windows per step"), ("steps", 1000, "optimizer steps"),
                                ("eval-every", 100, "steps between scans"), ("warmup", 100, "warm-up steps")):
        p.add_argument(f"--{name}", type=_positive_int, default=default, help=f"{what} (default {default})")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the init and the data order (default 0)")
    p.add_argument("--lr", type=_non_negative_float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=_non_negative_float, default=0.1,
                   help="AdamW weight decay on matrices (default 0.1)")
    p.add_argument("--untied", action="store_true", help="an unembedding of its own (default: tied to the embedding)")
    p.add_argument("--arch", default="llama", choices=TRAIN_ARCHS,
                   help="Llama blocks (RoPE) or GPT-2 blocks (learned positions, joint q/k/v, as the paper's GPT-2); "
                        "every arm on both (default llama)")
    p.add_argument("--out", default=None, help="folder for one checkpoint per arm and the run's JSON (default: none)")
    p.add_argument("--max-minutes", type=_non_negative_float, default=None,
                   help="wall-clock budget per arm: stop at the first scan after it (default: none)")
    p.add_argument("--resume", action="store_true",
                   help="keep each arm's training state in --out at every scan and go on from one found there "
                        "(the same arguments give the same run, stopped or not)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the training step (default: on CUDA only)")
    p.add_argument("--compile-mode", choices=TRAIN_COMPILE_MODES, default=None,
                   help="torch.compile's mode, implies --compile (reduce-overhead replays CUDA graphs)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on CUDA only)")
    p.set_defaults(func=_train)


_COMMANDS: dict[str, Callable] = {
    "scan": add_scan_command,
    "table3": add_table3_command,
    "trace": add_trace_command,
    "patch": add_patch_command,
    "report": add_report_command,
    "sinks": add_sinks_command,
    "train": add_train_command,
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mi-massive", description="Find, explain and visualise massive activations.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in _COMMANDS.values():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand: 0 on success, 2 for a bad argument, 1 for a failure (one line on stderr each)."""
    args = build_parser().parse_args(argv)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 alone prints
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    if hasattr(args, "device"):
        try:
            _check_device(args.device)
        except BadArgument as exc:
            sys.stderr.write(f"mi-massive: error: {exc}\n")
            return 2
    try:
        return int(args.func(args) or 0)
    except BadArgument as exc:
        sys.stderr.write(f"mi-massive: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("mi-massive: interrupted\n")
        return 130
    except Exception as exc:  # noqa: BLE001 (one line, no traceback; MI_MASSIVE_TRACEBACK=1 shows it)
        if os.environ.get("MI_MASSIVE_TRACEBACK"):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        sys.stderr.write(f"mi-massive: error: {message}\n")
        return 1


def entry() -> None:
    """The `mi-massive` program: `main`, then `_dist.exit_program` (a clean exit under torchrun)."""
    from . import _dist

    _dist.exit_program(main())


if __name__ == "__main__":
    entry()
