"""Where does the paper's phenomenon first appear? One `mi-massive train` process per condition on one GPU.

    python benchmarks/train_sweep.py --out /tmp/sweep --minutes 12 [--only gpt2_backcopy ...] [--analyses]
                                     [-- --steps 50 ...]

Each job trains one arm under one condition (architecture, data, context, learning rate, weight decay) until its
wall-clock budget is spent, scanned with the package's rule as it learns. Writes OUT/<job>/run_*.json (the
TrainingRun), OUT/<job>.log and OUT/summary.json: per job and scan, the largest top-1/median at position 0 and
elsewhere, the rule's hits, the share of layers with hits at one fixed position, the first token's attention
share and the validation loss. The rule is never lowered. With --analyses, the package's analyses run on each job's
checkpoint afterwards (train_h200.analyses: find_massive_activations, attention_sinks, and where there is a massive
activation trace_origin and path_patch), into the summary and OUT/<job>/analyses.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_h200 import analyse_run, launch_jobs  # noqa: E402

BASE = ["--d-model", "256", "--n-layers", "8", "--n-heads", "8", "--warmup", "200", "--steps", "400000"]
TEXT = "wiki-en+lee-news+linux-doc"
SUBSETS = ".runs/data"  # where benchmarks/text_subsets.py --out puts its files (relative to the repository root)
# name: (arm, its arguments); every job shares BASE, the seed and the scan settings
JOBS: dict[str, tuple[str, list[str]]] = {
    "gpt2_text": ("default", ["--arch", "gpt2", "--data", TEXT, "--n-ctx", "256", "--batch-size", "32", "--lr", "6e-4"]),
    "gpt2_text_lr2e-3": ("default", ["--arch", "gpt2", "--data", TEXT, "--n-ctx", "256", "--batch-size", "32",
                                     "--lr", "2e-3"]),
    "gpt2_text_d512": ("default", ["--arch", "gpt2", "--data", TEXT, "--n-ctx", "256", "--batch-size", "32",
                                   "--lr", "1e-3", "--d-model", "512"]),
    "llama_text": ("default", ["--data", TEXT, "--n-ctx", "256", "--batch-size", "32", "--lr", "1e-3"]),
    "llama_text_lr3e-3": ("default", ["--data", TEXT, "--n-ctx", "256", "--batch-size", "32", "--lr", "3e-3"]),
    "llama_text_d512": ("default", ["--data", TEXT, "--n-ctx", "256", "--batch-size", "32", "--lr", "1e-3",
                                    "--d-model", "512"]),
    "gpt2_backcopy": ("default", ["--arch", "gpt2", "--data", "backcopy", "--n-ctx", "256", "--batch-size", "64",
                                  "--lr", "1e-3"]),
    "llama_backcopy_lr1e-2": ("default", ["--data", "backcopy", "--n-ctx", "256", "--batch-size", "64",
                                          "--lr", "1e-2"]),
    # the second round (after the first eight showed no hit): the fastest-growing conditions, three to a GPU
    "llama_backcopy_sink_token_lr1e-2": ("sink_token", ["--data", "backcopy", "--n-ctx", "256", "--batch-size", "64",
                                                        "--lr", "1e-2"]),
    "gpt2_backcopy_sink_token_lr3e-3": ("sink_token", ["--arch", "gpt2", "--data", "backcopy", "--n-ctx", "256",
                                                       "--batch-size", "64", "--lr", "3e-3"]),
    "gpt2_text_d512_lr2e-3": ("default", ["--arch", "gpt2", "--data", TEXT, "--n-ctx", "256", "--batch-size", "32",
                                          "--lr", "2e-3", "--d-model", "512"]),
    # the paper's comparison on its own blocks (GPT-2, every variant since session 11) at the condition that came
    # closest for a default arm; one process per arm, so each arm's records and checkpoint stand alone
    **{f"paper_gpt2_{arm}": (arm, ["--arch", "gpt2", "--data", TEXT, "--n-ctx", "256", "--batch-size", "32",
                                   "--lr", "2e-3", "--d-model", "512"])
       for arm in ("default", "sink_token", "attn_bias")},
    # the third round (session 13): what moves the default arm's ratio at position 0 from the closest condition so far
    # (gpt2_text_d512_lr2e-3, 112-119): weight decay (it shrinks ordinary activations, the ratio's denominator),
    # depth, a higher rate, width (256 -> 512 raised it 2.7x), and the paper's GPT-2 context of 1024
    **{f"gpt2_text_d512_lr2e-3_{tag}": ("default", ["--arch", "gpt2", "--data", TEXT, "--n-ctx", "256",
                                                   "--batch-size", "32", "--lr", "2e-3", "--d-model", "512", *more])
       for tag, more in (("wd1", ["--weight-decay", "1.0"]), ("l12", ["--n-layers", "12"]),
                         ("lr4e-3", ["--lr", "4e-3"]), ("d768", ["--d-model", "768", "--n-heads", "12"]),
                         ("ctx1024", ["--n-ctx", "1024", "--batch-size", "8"]),
                         # then (depth alone had raised it): deeper still, and no weight decay (1.0 had lowered it)
                         ("l16", ["--n-layers", "16"]), ("l24", ["--n-layers", "24"]), ("wd0", ["--weight-decay", "0"]))},
    # and both levers together, on the default arm and on a learnable first token
    **{f"gpt2_text_d512_lr2e-3_l24_wd0{'_' + arm if arm != 'default' else ''}": (arm, [
        "--arch", "gpt2", "--data", TEXT, "--n-ctx", "256", "--batch-size", "32", "--lr", "2e-3", "--d-model", "512",
        "--n-layers", "24", "--weight-decay", "0"]) for arm in ("default", "sink_token")},
    # session 14: is fresh text the missing condition? The closest condition on 1/k of the offline mix's training
    # text, with the same held-out text (benchmarks/text_subsets.py writes the files; k = 1 is the mix itself)
    **{f"gpt2_text_d512_lr2e-3_1of{k}": ("default", ["--arch", "gpt2", "--data", f"file:{SUBSETS}/mix_1of{k}.jsonl.gz",
                                                     "--n-ctx", "256", "--batch-size", "32", "--lr", "2e-3",
                                                     "--d-model", "512"]) for k in (1, 2, 4, 8, 16)},
}


def summarize(out: Path, names: list[str]) -> dict:
    from mi_massive.train import TrainingRun

    summary: dict = {}
    for name in names:
        found = sorted((out / name).glob("run_*.json"))
        if not found:
            summary[name] = {"error": "no records"}
            continue
        run = TrainingRun.from_json(found[0])
        df = run.to_dataframe()
        columns = ["step", "tokens", "val_loss", "max_ratio_pos0", "max_ratio_other", "n_hits", "fixed_pos_layers",
                   "fixed_pos", "first_token_mass", "bias_mass"]
        summary[name] = {"arm": JOBS[name][0], "argv": JOBS[name][1],
                         "arm_info": json.loads(run.arm_info.to_json(orient="records"))[0],
                         "scans": json.loads(df[columns].to_json(orient="records"))}
    return summary


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--minutes", type=float, default=12.0)
    p.add_argument("--eval-every", type=int, default=1500)
    p.add_argument("--only", nargs="+", choices=sorted(JOBS), default=None)
    p.add_argument("--analyses", action="store_true", help="run the package's analyses on each job's checkpoint")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []  # appended to every job (later flags win)
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(JOBS)
    jobs = {n: ["--arms", JOBS[n][0], "--out", str(out / n), *BASE, *JOBS[n][1], "--eval-every", str(args.eval_every),
                "--max-minutes", str(args.minutes), *extra] for n in names}
    wall = launch_jobs(jobs, out)
    summary = summarize(out, names)
    summary["_wall_s"] = wall
    if args.analyses:
        from mi_massive.train import TrainingRun

        for name in names:
            found = sorted((out / name).glob("run_*.json"))
            if found:
                summary[name]["analyses"] = analyse_run(TrainingRun.from_json(found[0]))[JOBS[name][0]]
                (out / name / "analyses.json").write_text(json.dumps(summary[name]["analyses"], indent=1,
                                                                     default=str))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    for name in names:
        s = summary[name]
        last = s.get("scans", [{}])[-1]
        print(name, {k: last.get(k) for k in ("step", "tokens", "val_loss", "max_ratio_pos0", "max_ratio_other",
                                              "n_hits", "fixed_pos_layers", "first_token_mass")}, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
