"""The training lab on the lent GPU: every arm in its own process (they share the GPU), then the checks.

    python benchmarks/train_h200.py --out /tmp/lab --steps 3000 -- --d-model 512 --n-layers 8 --n-heads 8

Arguments after `--` go to `mi-massive train` unchanged. Writes OUT/run.json (the merged TrainingRun),
OUT/lab.png (paper_figure, if matplotlib is there) and OUT/checks.json: the issue's criteria computed from the
run, and the package's analyses (find_massive_activations, trace_origin, attention_sinks, path_patch) run on each
saved checkpoint after `load_model` opened it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def launch(arms: list[str], out: Path, extra: list[str]) -> float:
    return launch_jobs({arm: ["--arms", arm, "--out", str(out / arm), *extra] for arm in arms}, out)


def launch_jobs(jobs: dict[str, list[str]], out: Path) -> float:
    """Run `mi-massive train` once per job (name -> its arguments) in parallel processes sharing the GPU; each
    job's log goes to OUT/name.log and its records to the --out folder it names. Returns the wall-clock time."""
    t0 = time.time()
    procs = []
    for name, argv in jobs.items():
        cmd = [sys.executable, "-m", "mi_massive.cli", "train", *argv]
        folder = Path(argv[argv.index("--out") + 1])
        log = open(out / f"{name}.log", "w")
        env = {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": os.environ.get("TORCHINDUCTOR_COMPILE_THREADS", "1"),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "PYTHONUNBUFFERED": "1"}  # six processes
        # on 16 cores: torch's default of one thread per core each made the CPU side (data, scans) crawl
        procs.append((name, folder, subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env),
                      log))
    seen: dict[str, float] = {}

    def written(folder: Path) -> bool:  # records of this launch (a resumed job's folder holds the last call's too)
        return any(f.stat().st_mtime >= t0 for f in folder.glob("run_*.json"))

    while any(p.poll() is None for _, _, p, _ in procs):  # a process whose records are written is done: inductor's
        time.sleep(2)  # compile-worker shutdown at exit once held two of them for minutes
        for name, folder, p, _ in procs:
            if p.poll() is None and written(folder):
                seen.setdefault(name, time.time())
                if time.time() - seen[name] > 30:
                    p.terminate()
    for name, folder, p, log in procs:
        p.wait()
        log.close()
        print(f"{name}: exit {p.returncode}", flush=True)
        if p.returncode and not written(folder):
            print((out / f"{name}.log").read_text()[-3000:], flush=True)
    return time.time() - t0


def criteria(run) -> dict:
    """The issue's checks, computed from the last scan every arm reached (arms stop at different steps under
    --max-minutes)."""
    step = run.common_step()
    f = run.final(step).set_index("arm")
    out: dict = {"compared_at_step": step, "final": json.loads(run.final().to_json(orient="records"))}
    if "default" in f.index:
        d = f.loc["default"]
        out["default_fixed_pos_layers"] = float(d.fixed_pos_layers)
        out["default_fixed_pos"] = int(d.fixed_pos)
        out["default_max_ratio"] = float(d.max_ratio)
        out["default_ok"] = bool(d.fixed_pos_layers >= 1 / 3 and d.max_ratio >= run.ratio)
    if {"default", "attn_bias"} <= set(f.index):
        a, d = f.loc["attn_bias"], f.loc["default"]
        out["attn_bias_hits"] = int(a.n_hits)
        out["ratio_default_over_attn_bias"] = float(d.max_ratio / a.max_ratio)
        out["val_loss_gap"] = float(abs(d.val_loss - a.val_loss))
        out["attn_bias_ok"] = bool(a.n_hits == 0 and d.max_ratio / a.max_ratio >= 10)
        out["val_loss_ok"] = bool(abs(d.val_loss - a.val_loss) <= 0.05)
    if "sink_token" in f.index:
        s = run.by_layer("sink_token")
        hit_layers = s[s.n_hits > 0]
        out["sink_token_hit_layers"] = int(len(hit_layers))
        out["sink_token_hits_on_sink"] = bool(len(hit_layers) and (hit_layers.hit_prompts_other == 0).all())
    return out


def analyses(checkpoint: str, tokens) -> dict:
    """The package's analyses on a checkpoint opened by load_model (what a user would run next)."""
    import torch

    from mi_massive import attention_sinks, find_massive_activations, load_model, path_patch, trace_origin

    t0 = time.time()
    model = load_model(checkpoint, device="cuda" if torch.cuda.is_available() else "cpu")
    rec: dict = {"checkpoint": checkpoint, "bridge_attention": type(model.blocks[0].attn).__name__}
    acts = find_massive_activations(model, tokens)
    rec["find_massive_activations"] = repr(acts)
    sinks = attention_sinks(model, tokens, sink_positions=[0])
    rec["attention_sinks"] = repr(sinks)
    try:
        origin = trace_origin(model, tokens[:1]) if len(acts) else None
        rec["trace_origin"] = repr(origin) if origin is not None else "skipped: no massive activation"
    except Exception as exc:  # noqa: BLE001 (recorded, the run goes on)
        rec["trace_origin"] = f"error: {type(exc).__name__}: {exc}"
    try:
        # a massive activation first written in the last block has no later attention to patch into: only the
        # direct path to the logits is left (the copy task's final-block values, RESULTS.md)
        last = len(acts) and int(acts.layer.min()) == model.cfg.n_layers - 1
        pp = (path_patch(model, tokens[:2], receivers=("direct",) if last else ("k", "v"), progress=False)
              if len(acts) else None)
        rec["path_patch"] = repr(pp) if pp is not None else "skipped: no massive activation"
    except Exception as exc:  # noqa: BLE001
        rec["path_patch"] = f"error: {type(exc).__name__}: {exc}"
    rec["seconds"] = time.time() - t0
    return rec


def analyse_run(run) -> dict:
    """`analyses` on every arm's checkpoint of a TrainingRun, each on 4 held-out windows (with the sink token in
    front for that arm); an arm whose analyses fail records the error."""
    from mi_massive.train import data as _data
    from mi_massive.train.lab import LabSpec, load_data

    spec = LabSpec(**run.spec)
    tok = _data.tokenizer_of(spec.tokenizer)
    td = load_data(spec, tok, held_out_only=True)
    out: dict = {}
    for arm in run.arms:
        ckpt = run.arm_info.set_index("arm").at[arm, "checkpoint"]
        x, _ = _data.held_out(td.val, n=4, n_ctx=spec.n_ctx, sink_id=tok.bos_token_id if arm == "sink_token" else None)
        try:
            out[arm] = analyses(ckpt, x)
        except Exception as exc:  # noqa: BLE001
            out[arm] = f"error: {type(exc).__name__}: {exc}"
        print(arm, out[arm], flush=True)
    return out


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--arms", nargs="+", default=["default", "sink_token", "attn_bias", "softmax1", "gated", "sigmoid"])
    p.add_argument("--no-analyses", action="store_true")
    args = p.parse_args(own)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wall = launch(args.arms, out, extra)
    from mi_massive.train import TrainingRun

    runs = [TrainingRun.from_json(next((out / a).glob("run_*.json"))) for a in args.arms if (out / a).exists()
            and any((out / a).glob("run_*.json"))]
    run = TrainingRun.merge(runs)
    run = TrainingRun(run.arms, run.curves, run.arm_info, run.spec, run.data, run.threshold, run.ratio,
                      (f"{len(run.arms)} arms trained in parallel processes on one GPU, {wall:.0f} s wall clock",))
    run.to_json(out / "run.json")
    print(run, flush=True)
    print(run.final().to_string(index=False), flush=True)
    checks = criteria(run)
    checks["wall_s"] = wall
    checks["argv"] = sys.argv[1:]
    try:
        run.paper_figure(out / "lab.png")
    except ImportError as exc:
        checks["figure"] = f"not drawn: {exc}"
    (out / "checks.json").write_text(json.dumps(checks, indent=1, default=str))  # kept if the analyses time out
    if not args.no_analyses:
        checks["analyses"] = analyse_run(run)
    (out / "checks.json").write_text(json.dumps(checks, indent=1, default=str))
    print(json.dumps({k: v for k, v in checks.items() if k not in ("final", "analyses")}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
