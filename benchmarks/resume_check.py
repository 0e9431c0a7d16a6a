"""Does a resumed arm go on as if never stopped, on the GPU (torch.compile, bf16 autocast, fused AdamW)?

    python benchmarks/resume_check.py --out /tmp/resume [-- --steps 3000 ...]

Trains the same arms three ways with `mi-massive train`: twice uninterrupted (`whole`, `whole2`: the run-to-run
spread of the device's nondeterministic kernels), and once stopped by a wall-clock budget and resumed from its
`TrainState` in a second process (`cut`). Writes OUT/resume_check.json: per arm and scan, the three validation
losses and top-1/median ratios, the step the resumed run went on from, and the largest differences
|cut - whole| and |whole2 - whole| after it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--arms", "default", "attn_bias", "--arch", "gpt2", "--data", "wiki-en+lee-news+linux-doc", "--d-model",
        "256", "--n-layers", "4", "--n-heads", "4", "--n-ctx", "256", "--batch-size", "32", "--steps", "3000",
        "--eval-every", "500", "--warmup", "100", "--lr", "2e-3"]


def train(out: Path, *more: str) -> subprocess.Popen:
    log = open(out.with_suffix(".log"), "a")
    return subprocess.Popen([sys.executable, "-m", "mi_massive.cli", "train", *ARGS, "--out", str(out), *more],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--stop-minutes", type=float, default=0.5, help="the cut run's first budget")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    first = [train(out / "whole", *extra), train(out / "whole2", *extra),
             train(out / "cut", "--resume", "--max-minutes", str(args.stop_minutes), *extra)]
    first[2].wait()
    second = train(out / "cut", "--resume", *extra)
    codes = [q.wait() for q in [*first[:2], second]]
    from mi_massive.train import TrainingRun

    runs = {name: TrainingRun.from_json(next((out / name).glob("run_*.json"))) for name in ("whole", "whole2", "cut")}
    record: dict = {"argv": ARGS + extra, "exit_codes": codes, "arms": {}}
    for arm in runs["whole"].arms:
        frames = {n: (lambda df: df[df.arm == arm].set_index("step"))(r.to_dataframe()) for n, r in runs.items()}
        at = int(runs["cut"].arm_info.set_index("arm").at[arm, "resumed_at"])
        rows = []
        for step in frames["whole"].index:
            rows.append({"step": int(step), **{f"{k}_{n}": float(frames[n].at[step, k]) for n in frames
                                               for k in ("val_loss", "max_ratio_pos0")}})
        after = [r for r in rows if r["step"] > at]
        record["arms"][arm] = {
            "resumed_at": at, "scans": rows,
            "max_abs_val_loss_cut_vs_whole": max(abs(r["val_loss_cut"] - r["val_loss_whole"]) for r in after),
            "max_abs_val_loss_whole2_vs_whole": max(abs(r["val_loss_whole2"] - r["val_loss_whole"]) for r in after),
            "max_rel_ratio_cut_vs_whole": max(abs(r["max_ratio_pos0_cut"] / r["max_ratio_pos0_whole"] - 1)
                                              for r in after),
            "max_rel_ratio_whole2_vs_whole": max(abs(r["max_ratio_pos0_whole2"] / r["max_ratio_pos0_whole"] - 1)
                                                 for r in after),
            "tokens_per_s": {n: r.arm_info.set_index("arm").at[arm, "tokens_per_s"] for n, r in runs.items()},
        }
    (out / "resume_check.json").write_text(json.dumps(record, indent=1, default=float))
    print(json.dumps({a: {k: v for k, v in r.items() if k != "scans"} for a, r in record["arms"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
