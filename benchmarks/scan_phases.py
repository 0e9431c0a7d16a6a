"""Where a scan's time goes on CUDA, beyond the bare forward: its knobs one at a time, and a profile.

    python benchmarks/scan_phases.py --device cuda [--shape smollm2|1.1b] [--dtype bfloat16] [--out FILE]

A randomly initialised LLaMA of smollm2-135m's shape (30 layers, d_model 576, 9 heads, 3 KV heads, d_mlp
1536, vocabulary 49,152) or of bench.py's 1.1B shape (no wheel needed) scans 64 x 256 random tokens in
batches of 16. Timed in alternation: the bare HF CausalLM (logits included, as bench.py's "bare"), its
trunk (`hf.base_model`, no hooks), the trunk's passes as the scan runs them with a no-op hook per layer, the
scan as shipped, and the scan with one knob changed (statistics by sort, groups of 16 or 256 MB of layers
instead of 64 MB, Triton programs of 2048 entries and 4 warps or of 4096 and 8 for every dtype, the digits found
so far derived in every Triton program instead of resolved between rounds); peak memory
of the scan and of the bare forward; the host's own work (token strings). With --profile a torch.profiler
table of one scan (self CPU and CUDA time per op), with --cprofile the host's time per Python function in one
scan, with --trace a Chrome trace. Prints JSON lines; with --out also writes the profiler tables there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import (LLAMA_SHAPES, _sync, graph_timings, interleaved, peak_memory, random_llama,  # noqa: E402
                   random_tokens, settings, timeit)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--shape", choices=list(LLAMA_SHAPES), default="smollm2")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--cprofile", action="store_true", help="the host's time per Python function in one scan")
    p.add_argument("--trace", default=None,
                   help="write here a gzipped Chrome trace of one bare, one trunk_hooks and one scan")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    from mi_massive import _inputs, detect, engine
    from mi_massive.engine import _bare, unwired

    model = random_llama(args.shape, args.device, getattr(torch, args.dtype))
    toks = random_tokens(args.prompts, args.seq, len(model.tokenizer), model.tokenizer.bos_token_id, low=3)  # ids
    # the char tokenizer names (others cost the scan's token strings a per-id lookup, as no real model does)
    dev = toks.to(args.device)

    def batched(forward, inference_mode: bool = False):
        """Passes of the unwired HF model over the tokens in batches: forward(hf, tokens)."""
        def run() -> None:
            with unwired(model) as hf, torch.inference_mode(inference_mode):
                for i in range(0, len(dev), args.batch_size):
                    forward(hf, dev[i : i + args.batch_size])
        return run

    trunk = batched(lambda hf, t: hf.base_model(t, use_cache=False))
    bare = batched(lambda hf, t: hf(t, use_cache=False))
    bare_inference_mode = batched(lambda hf, t: hf(t, use_cache=False), True)  # as the scan's passes run

    run_trunk = _bare.trunk_runner(model)

    def trunk_hooks() -> None:  # the scan's passes with a no-op hook per decoder layer
        for i in range(0, len(dev), args.batch_size):
            run_trunk(dev[i : i + args.batch_size], lambda layer, x: None)

    def scan_with(**knobs):
        """The scan with settings changed for the call: the engine's (cuda_graphs, cuda_stats, group_bytes) or
        _select's kernel constants as select__NAME."""
        from mi_massive.engine import _select

        where = {k: (_select, k[len("select__"):]) if k.startswith("select__") else (engine.settings, k)
                 for k in knobs}

        def run() -> None:
            with settings([(*where[k], v) for k, v in knobs.items()]):
                detect.scan(model, toks, batch_size=args.batch_size, progress=False)
        return run

    fns = {"bare": bare, "bare_inference_mode": bare_inference_mode, "trunk": trunk, "trunk_hooks": trunk_hooks,
           "scan": scan_with(), "no_graphs": scan_with(cuda_graphs=False), "sort": scan_with(cuda_stats="sort"),
           "group_16mb": scan_with(group_bytes=16 << 20), "group_256mb": scan_with(group_bytes=256 << 20),
           "block_2k_4w": scan_with(select___BLOCK=2048, select___WARPS=4, select___BLOCK_16=2048,
                                    select___WARPS_16=4),
           "derive": scan_with(select___RESOLVE=False),
           "block_4k_8w": scan_with(select___BLOCK=4096, select___WARPS=8, select___BLOCK_16=4096,
                                    select___WARPS_16=8)}
    t = interleaved(fns, args.device, repeat=args.repeat)
    mem = {k: peak_memory(fns[k], args.device) for k in ("bare", "scan")}
    host = timeit(lambda: [_inputs.str_tokens(model, r) for r in toks], "cpu", repeat=5)
    rec = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(["scan_phases.py", *sys.argv[1:]]),
           "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
           "figure": f"scan phases (random LLaMA, {args.shape} shape)", "dtype": args.dtype, "device": args.device,
           "tokens": toks.numel(), **{f"{k}_s": v for k, v in t.items()},
           **{f"{k}_over_bare": v / t["bare"] for k, v in t.items() if k != "bare"},
           "scan_over_trunk": t["scan"] / t["trunk"],
           "scan_over_bare_inference_mode": t["scan"] / t["bare_inference_mode"],
           "memory_ratio": mem["scan"] / mem["bare"],
           "graph_timings": graph_timings(model),
           "str_tokens_s": host}
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()}), flush=True)
    if args.cprofile:
        import cProfile
        import io
        import pstats

        for label in ("trunk_hooks", "scan"):
            prof = cProfile.Profile()
            prof.enable()
            fns[label]()
            _sync(args.device)
            prof.disable()
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(40)
            print(f"== cProfile {label} ==\n" + text.getvalue()[-7000:], flush=True)
    if args.trace and args.device.startswith("cuda"):
        import gzip
        import shutil

        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for label in ("bare", "trunk_hooks", "scan"):
                with torch.profiler.record_function(f"phase:{label}"):
                    fns[label]()
                    torch.cuda.synchronize()
        prof.export_chrome_trace(args.trace + ".json")
        with open(args.trace + ".json", "rb") as src, gzip.open(args.trace, "wb") as dst:
            shutil.copyfileobj(src, dst)
    if args.profile and args.device.startswith("cuda"):
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fns["scan"]()
            torch.cuda.synchronize()
        tables = [prof.key_averages().table(sort_by=s, row_limit=25) for s in ("self_cpu_time_total",
                                                                                  "self_cuda_time_total")]
        print(tables[1][-6000:], flush=True)
        if args.out:
            Path(args.out).write_text("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
