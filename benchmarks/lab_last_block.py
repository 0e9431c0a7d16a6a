"""What the copy task's final-block massive values do: train the lab's default arm on the copy task (on the CPU; its
time is in benchmarks/RESULTS.md) and compare the largest final-block dimension with the entropy of the
next-token prediction.

    python benchmarks/lab_last_block.py [--steps 600] [--out /tmp/lab_last_block]

In the copy task the first half of every span is unpredictable (uniform over the alphabet) and the second half is
a copy. The hypothesis this checks: the final block writes one huge dimension exactly where the next token is
unpredictable, so that the final norm maps the residual onto that one axis and the logits come out flat.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--out", default="/tmp/lab_last_block")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    from mi_massive import load_model
    from mi_massive.train import data as _data
    from mi_massive.train import lab

    spec = lab.LabSpec(d_model=128, n_layers=4, n_heads=4, n_ctx=128, batch_size=32, steps=args.steps,
                       eval_every=args.steps, warmup=100, lr=3e-3, data="copy", vocab_size=_data.SYNTHETIC_VOCAB, eval_windows=8,
                       val_windows=16)
    tok = _data.tokenizer_of(spec.tokenizer)
    rec = lab.train_arm("default", spec, token_data=lab.load_data(spec, tok), tokenizer=tok, out_dir=args.out,
                        device="cpu", progress=False)
    model = load_model(rec["checkpoint"], device="cpu")
    n, ctx, span = 8, spec.n_ctx, 32
    x, _ = _data.held_out(_data.copy_tokens(n_train=1 << 16, seed=spec.seed).val, n=n, n_ctx=ctx, sink_id=None)
    name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    logits, cache = model.run_with_cache(x, names_filter=lambda s: s == name)
    a = cache[name]
    dim = int(a.abs().flatten(0, 1).amax(0).argmax())
    stream_pos = torch.arange(n)[:, None] * (ctx + 1) + torch.arange(ctx)[None]  # held-out windows are contiguous
    unpredictable = (stream_pos + 1) % (2 * span) < span  # the next token opens or continues a fresh span
    v = a[..., dim].abs()
    entropy = torch.distributions.Categorical(logits=logits.float()).entropy()
    out = {"steps": args.steps, "dim": dim, "median_abs_x": float(a.abs().median()),
           "abs_x_dim_unpredictable": float(v[unpredictable].mean()), "abs_x_dim_copyable": float(v[~unpredictable].mean()),
           "entropy_unpredictable": float(entropy[unpredictable].mean()),
           "entropy_copyable": float(entropy[~unpredictable].mean()),
           "entropy_uniform": float(torch.log(torch.tensor(512.0))),
           "corr_abs_x_dim_entropy": float(torch.corrcoef(torch.stack([v.flatten(), entropy.flatten()]))[0, 1])}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
