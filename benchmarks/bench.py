"""Benchmarks as ratios against a bare forward pass measured in the same run (these machines are noisy).

    python benchmarks/bench.py                       # CPU, smollm2-135m: scan, origin, patching, loads
    python benchmarks/bench.py --device cuda --gpu   # adds bf16/fp32 scans and a random 1B LLaMA
    python benchmarks/bench.py --device cuda --gpu --skip origin patch load --cuda-stats sort

Prints one line per figure and appends a JSON record to --out (default: benchmarks/results.jsonl).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timeit(fn: Callable[[], object], device: str, *, repeat: int = 3) -> float:
    """Median wall time of `repeat` runs after one warm-up."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved(fns: dict[str, Callable[[], object]], device: str, *, repeat: int = 3) -> dict[str, float]:
    """Median times of several functions, run in alternation so that drifting load hits all alike."""
    for fn in fns.values():
        fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _rss() -> int:
    """The process's resident set size now, in bytes (Linux)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(fn: Callable[[], object], device: str) -> float:
    """Peak bytes allocated during fn above what was allocated before: on CUDA the allocator's peak; on the CPU
    the resident set size above its value after `malloc_trim`, sampled every 0.2 ms by a thread."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)
    import gc
    import threading

    gc.collect()
    try:  # give freed heap memory back to the OS first, so that what fn allocates shows as growth
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    base, peak, done = _rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.0002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return float(max(peak[0], _rss()) - base)


def random_tokens(n: int, seq: int, vocab: int, bos: int, seed: int = 0, low: int = 100) -> torch.Tensor:
    """n x seq random ids in [low, min(vocab, 30000)), BOS first."""
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(low, min(vocab, 30000), (n, seq), generator=g)
    toks[:, 0] = bos
    return toks


def bench_scan(model, toks: torch.Tensor, device: str, *, batch_size: int, label: str, hf_default=None,
               repeat: int = 3) -> dict:
    """find_massive_activations + layer_profile (one pass) vs bare HF forwards over the same tokens.

    "bare" is the plain HF CausalLM (logits included) of the same model with the bridge's components swapped
    back (`engine.unwired`), "trunk" its base model without lm_head, "bridge" the TransformerBridge's own
    forward with no hooks. All without KV cache (`use_cache=False`); "bare" and "trunk" use the attention
    implementation the bridge loaded (eager). `hf_default`, a separately loaded HF model, adds its forward
    with transformers' default attention.
    """
    from mi_massive.detect import scan
    from mi_massive.engine import unwired

    dev_toks = toks.to(device)

    def batched(forward: Callable[[torch.Tensor], object]) -> None:
        with torch.inference_mode():
            for i in range(0, len(dev_toks), batch_size):
                forward(dev_toks[i : i + batch_size])

    def bare() -> None:
        with unwired(model) as hf:
            batched(lambda t: hf(t, use_cache=False))

    def trunk() -> None:
        with unwired(model) as hf:
            batched(lambda t: hf.base_model(t, use_cache=False))

    fns = {"bare": bare, "trunk": trunk, "bridge": lambda: batched(lambda t: model(t, use_cache=False)),
           "scan": lambda: scan(model, toks, batch_size=batch_size, progress=False)}
    if hf_default is not None:
        fns["hf_default"] = lambda: batched(lambda t: hf_default(t, use_cache=False))
    t = interleaved(fns, device, repeat=repeat)
    reps = 1 if device.startswith("cuda") else 3  # sampled RSS on the CPU varies run to run: the median of 3
    mem = {k: statistics.median(peak_memory(f, device) for _ in range(reps)) for k, f in fns.items()}
    n_tok = toks.numel()
    rec = {
        "figure": f"scan {label}", "tokens": n_tok, "bare_s": t["bare"], "scan_s": t["scan"],
        "time_ratio": t["scan"] / t["bare"], "trunk_s": t["trunk"], "trunk_ratio": t["trunk"] / t["bare"],
        "scan_over_trunk": t["scan"] / t["trunk"], "bridge_s": t["bridge"], "bridge_ratio": t["bridge"] / t["bare"],
        "scan_over_bridge": t["scan"] / t["bridge"], "tokens_per_s": n_tok / t["scan"],
        "bare_tokens_per_s": n_tok / t["bare"], "bare_attn": model.original_model.config._attn_implementation,
        **{f"peak_bytes_{k}": v for k, v in mem.items()},
        "memory_ratio": (mem["scan"] / mem["bare"]) if mem["bare"] > 0 else None,
        "trunk_memory_ratio": (mem["scan"] / mem["trunk"]) if mem["trunk"] > 0 else None,
    }
    if hf_default is not None:
        rec.update(hf_default_s=t["hf_default"], hf_default_attn=hf_default.config._attn_implementation,
                   scan_over_hf_default=t["scan"] / t["hf_default"])
    if device.startswith("cuda"):
        rec.update(_graphs_record(model, toks, batch_size))
    return rec


def _graphs_record(model, toks: torch.Tensor, batch_size: int) -> dict:
    """What the scan's CUDA graphs did (`mi_massive.engine._graphs`): the timings kept for the batch shape, and
    whether a scan without graphs finds exactly the same (run last, so the timed scans were not affected)."""
    from mi_massive import engine

    timings = graph_timings(model)
    same = scans_agree(model, toks, batch_size, engine.settings, "cuda_graphs", (False, True))
    return {"cuda_graphs": engine.settings.cuda_graphs, "graph_timings": timings, "graphs_same_result_as_eager": same}


def graph_timings(model) -> dict:
    """The `_graphs.Timing` kept with the model's trunk, by batch shape (a JSON-able record)."""
    from mi_massive.engine import _bare

    return {str(k[0]): vars(v) for k, v in _bare.kept_trunk(model).timings.items()}


@contextlib.contextmanager
def settings(changes: list[tuple[object, str, object]]):
    """Settings (object, name, value) changed for the body of the `with`, and put back after it: the engine's
    through `engine.configure`, a module's (a kernel's constants) by setattr."""
    from mi_massive import engine

    ours = {name: value for target, name, value in changes if target is engine.settings}
    others = [c for c in changes if c[0] is not engine.settings]
    saved = [(module, name, getattr(module, name)) for module, name, _ in others]
    with engine.configure(**ours):
        for module, name, value in others:
            setattr(module, name, value)
        try:
            yield
        finally:
            for module, name, value in reversed(saved):
                setattr(module, name, value)


def scans_agree(model, toks: torch.Tensor, batch_size: int, module, setting: str, values) -> bool:
    """Whether scans with `module.setting` at each of `values` find the same hits and layer profile, row for row
    (the setting is put back afterwards)."""
    from mi_massive import detect

    runs = []
    for value in values:
        with settings([(module, setting, value)]):
            found, profile = detect.scan(model, toks, batch_size=batch_size, progress=False)
        runs.append((found.to_dataframe(), profile.to_dataframe()))
    (found0, profile0), *others = runs
    return all(found.equals(found0) and profile.equals(profile0) for found, profile in others)


def bench_second_load(name: str) -> dict:
    """load_model(name) in a fresh process once the cache is warm: imports and the load itself, apart."""
    code = (
        "import time; t = time.perf_counter(); import mi_massive, transformer_lens.model_bridge; "
        "t1 = time.perf_counter(); mi_massive.load_model(" + repr(name) + "); "
        "print(t1 - t, time.perf_counter() - t1)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)  # warms the cache
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    imports, load = (float(v) for v in out.stdout.strip().splitlines()[-1].split())
    return {"figure": f"second load {name}", "seconds": load, "import_seconds": imports}


def bench_origin(model, prompt: str, device: str) -> dict:
    from mi_massive import trace_origin

    toks = model.to_tokens(prompt)
    fwd = timeit(lambda: model(toks, return_type="loss"), device)
    t = timeit(lambda: trace_origin(model, prompt), device, repeat=5)  # the median of 2 was the slower of two
    return {"figure": "trace_origin with causal check", "forward_s": fwd, "origin_s": t, "forward_equivalents": t / fwd}


def bench_patching(model, prompt: str, device: str, *, batch_size: int = 64) -> dict:
    """All heads and paths (K, V, Q, direct) batched, against one forward and against the naive loop."""
    from mi_massive import path_patch

    toks = model.to_tokens(prompt)
    fwd = timeit(lambda: model(toks, return_type="loss"), device)
    result = path_patch(model, prompt, batch_size=batch_size)
    t = timeit(lambda: path_patch(model, prompt, batch_size=batch_size), device, repeat=2)
    tn = timeit(lambda: path_patch(model, prompt, method="naive"), device, repeat=1)
    return {"figure": "path patching, all heads and paths", "forward_s": fwd, "patch_s": t,
            "forward_equivalents": t / fwd, "rows": result.forward_rows, "calls": result.forward_calls,
            **arithmetic_floor(model, result, toks.shape[1], device, fwd),
            "naive_s": tn, "speedup_over_naive": tn / t}


def arithmetic_floor(model, result, n_tokens: int, device: str, forward_s: float) -> dict:
    """The multiply-adds path patching did (`block_rows` decoder blocks and `logit_rows` unembeddings, summed over
    prompt-rows), in forwards of one prompt (`arithmetic_forwards`: the time on a machine that runs rows one after
    another at a single forward's speed), and the least time they can take here: at the speed of one large matrix
    product of the model's dtype on this device ([rows x tokens, d_model] @ [d_model, d_mlp], timed now), in
    forward-equivalents (`gemm_floor_forward_equivalents`). A block's multiply-adds per token: its weight matrices,
    plus 2 x n_tokens x d_model in attention scores and their weighted sum; the unembedding's: d_model x d_vocab."""
    cfg = model.cfg
    block = sum(p.numel() for p in model.blocks[0].parameters() if p.ndim >= 2) + 2 * n_tokens * cfg.d_model
    unembed = cfg.d_model * cfg.d_vocab
    macs = n_tokens * (result.block_rows * block + result.logit_rows * unembed)
    dtype = next(model.parameters()).dtype
    a = torch.randn(max(1, result.logit_rows) * n_tokens, cfg.d_model, device=device, dtype=dtype)
    b = torch.randn(cfg.d_model, cfg.d_mlp, device=device, dtype=dtype)
    gemm_s = timeit(lambda: [a @ b for _ in range(10)], device, repeat=5) / 10  # (ten: a GPU's launches)
    flops = 2 * a.shape[0] * a.shape[1] * b.shape[1] / gemm_s
    return {"arithmetic_forwards": macs / (n_tokens * (cfg.n_layers * block + unembed)), "gemm_flops": flops,
            "gemm_floor_forward_equivalents": 2 * macs / flops / forward_s}


LLAMA_SHAPES = {  # LlamaConfig fields of the randomly initialised models
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152),
    "1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, vocab_size=32000),
}


def random_llama(shape: str, device: str, dtype: torch.dtype, *, name: str | None = None):
    """A randomly initialised LLaMA of one of LLAMA_SHAPES (seed 0), booted as mi_massive's bridge."""
    import transformers

    from mi_massive.models import load_model
    from mi_massive.testing import char_tokenizer

    cfg = transformers.LlamaConfig(**LLAMA_SHAPES[shape], max_position_embeddings=2048, bos_token_id=1,
                                   eos_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):
        hf = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    hf.config._name_or_path = name or f"random-{shape}-shaped"
    return load_model(hf, tokenizer=char_tokenizer(), device=device, dtype=dtype)  # load_model casts: keep the dtype


def planted_llama(shape: str, device: str, dtype: torch.dtype, *, dim: int, magnitude: float = 2000.0,
                  name: str | None = None, bos: bool = True):
    """A random LLaMA of one of LLAMA_SHAPES with a massive activation planted at BOS (block 2, neuron 11, `dim`),
    planted in float32 when `dtype` is float16 (where the value is representable), then cast. `bos`: every prompt
    starts with BOS by default, since the plant fires there."""
    from mi_massive import _inputs
    from mi_massive.testing import Plant, plant_massive_activation

    plant_dtype = torch.float32 if dtype == torch.float16 else dtype
    model = random_llama(shape, device, plant_dtype, name=name or f"random-{shape}-planted")
    if bos:
        model.cfg.default_prepend_bos = True
        _inputs.set_default_bos(model, True)
    plant_massive_activation(model, Plant(layer=2, neuron=11, dim=dim, magnitude=magnitude))
    if dtype != plant_dtype:
        model.to(dtype)
    return model


def big_llama(device: str, dtype: torch.dtype, *, magnitude: float = 2000.0):
    """A randomly initialised LLaMA-style model of ~1.1B parameters with a planted massive activation."""
    model = planted_llama("1.1b", device, dtype, dim=1234, magnitude=magnitude, name="random-llama-1.1b", bos=False)
    return model, sum(p.numel() for p in model.original_model.parameters())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--gpu", action="store_true", help="also run the GPU figures (bf16/fp32, random 1B LLaMA)")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--skip", nargs="*", default=[], help="sections to skip: scan load origin patch")
    p.add_argument("--repeat", type=int, default=3, help="alternating timed runs per scan figure (median)")
    p.add_argument("--patch-batch", type=int, default=64, help="rows per path-patching pass (512 on a GPU)")
    p.add_argument("--load-models", nargs="*", default=None, help="embedded models for the second-load figure")
    p.add_argument("--cuda-stats", choices=["triton", "sort"], default=None,
                   help="the scan's CUDA statistics path (mi_massive.engine.settings.cuda_stats); default: as shipped")
    p.add_argument("--cuda-graphs", choices=["on", "off"], default=None,
                   help="replay CUDA graphs of the scan's passes where they pay (engine.settings.cuda_graphs)")
    p.add_argument("--out", default=str(HERE / "results.jsonl"))
    args = p.parse_args(argv)
    from mi_massive import engine

    knobs = {} if args.cuda_stats is None else {"cuda_stats": args.cuda_stats}
    if args.cuda_graphs:
        knobs["cuda_graphs"] = args.cuda_graphs == "on"
    with engine.configure(**knobs):
        return _run(args, argv)


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    from transformers import AutoModelForCausalLM

    from mi_massive import load_model
    from mi_massive.models import EMBEDDED, embedded_path

    from mi_massive import engine

    torch.set_grad_enabled(False)
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.node(),
        "cpu_count": torch.get_num_threads(), "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "torch": torch.__version__, "cuda_stats": engine.settings.cuda_stats,
        "cuda_graphs": engine.settings.cuda_graphs, "group_mb": engine.settings.group_bytes >> 20,
    }
    records: list[dict] = []

    def emit(rec: dict) -> None:
        rec = {**meta, **rec}
        records.append(rec)
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items() if k not in meta}
        print(json.dumps(shown), flush=True)

    dtypes = [torch.float32, torch.bfloat16] if args.gpu else [torch.float32]
    if "scan" not in args.skip:
        for dtype in dtypes:
            model = load_model("smollm2-135m", device=args.device, dtype=dtype)
            hf = AutoModelForCausalLM.from_pretrained(embedded_path("smollm2-135m"), dtype=dtype).to(args.device).eval()
            toks = random_tokens(args.prompts, args.seq, model.cfg.d_vocab, model.tokenizer.bos_token_id)
            emit(bench_scan(model, toks, args.device, batch_size=args.batch_size, hf_default=hf, repeat=args.repeat,
                            label=f"smollm2-135m {str(dtype).split('.')[-1]}"))
            del model, hf
    if args.gpu:
        for dtype in dtypes:
            model, n_params = big_llama(args.device, dtype)
            toks = random_tokens(args.prompts, args.seq, model.cfg.d_vocab, model.tokenizer.bos_token_id)
            rec = bench_scan(model, toks, args.device, batch_size=args.batch_size, repeat=args.repeat,
                             label=f"random-llama-1.1b {str(dtype).split('.')[-1]}")
            from mi_massive import find_massive_activations

            found = find_massive_activations(model, toks[:2])
            rec.update(n_params=n_params, planted_found=1234 in found.dims)
            if args.device.startswith("cuda"):  # Triton's statistics and the sort's must agree to the bit
                rec["triton_same_result_as_sort"] = scans_agree(model, toks[:8], 4, engine.settings, "cuda_stats",
                                                                ("triton", "sort"))
            emit(rec)
            del model
        model, _ = big_llama(args.device, torch.float16, magnitude=1e6)  # beyond float16's 65504
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from mi_massive import find_massive_activations

            found = find_massive_activations(model, random_tokens(2, 32, 32000, 1))
        emit({"figure": "float16 overflow reported", "nonfinite_entries": int(found.nonfinite.sum()),
              "warned": any("overflow" in str(w.message) for w in caught)})
        del model
    if "origin" not in args.skip or "patch" not in args.skip:
        model = load_model("smollm2-135m", device=args.device)
        prompt = "Summer is warm. Winter is cold. The quick brown fox jumps over the lazy dog."
        if "origin" not in args.skip:
            emit(bench_origin(model, prompt, args.device))
        if "patch" not in args.skip:
            emit(bench_patching(model, prompt, args.device, batch_size=args.patch_batch))
    if "load" not in args.skip:
        for name in EMBEDDED if args.load_models is None else args.load_models:
            emit(bench_second_load(name))
    with open(args.out, "a", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
