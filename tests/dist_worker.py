"""Runs the corpus-level analyses over the first N prompts and writes what they found (rank 0 only) as JSON.

    python tests/dist_worker.py MODEL N OUT.json                          # one process
    torchrun --standalone --nproc-per-node 2 tests/dist_worker.py MODEL N OUT.json   # two ranks (gloo on CPUs)

MODEL is a family of mi_massive.testing.tiny_model ("tiny-llama") or an embedded model ("smollm2-135m").
"""

import json
import sys

import torch

PROMPTS = [
    "Summer is warm. Winter is cold.",
    "The quick brown fox jumps over the lazy dog.",
    "In 1905, Albert Einstein published four papers that changed physics.",
    "Rivers carry sand to the sea, and the sea gives it back to the shore.",
    "A cat sat.",
]


def results(model, prompts: list[str]) -> dict:
    from mi_massive import attention_sinks, find_massive_activations, layer_profile, massive_stats, perplexity

    acts = find_massive_activations(model, prompts, batch_size=2)
    prof = layer_profile(model, prompts, batch_size=2)
    stats = massive_stats(model, prompts, batch_size=2, max_tokens=12)
    ppl = perplexity(model, prompts * 2, seq_len=8, batch_size=2)
    sinks = attention_sinks(model, prompts, batch_size=2)
    return {
        "hits": acts.to_dataframe().drop(columns=["value", "ratio"]).to_dict("list"),
        "hit_values": acts.value.tolist(),
        "str_tokens": [list(t) for t in acts.str_tokens],
        "profile_top": prof.top.tolist(), "profile_median": prof.median.tolist(), "n_prompts": prof.n_prompts,
        "stats_dims": list(stats.dims), "stats_mean": stats.mean.nan_to_num(12345.0).tolist(),
        "stats_std": stats.std.nan_to_num(12345.0).tolist(), "stats_count": stats.count.tolist(),
        "ppl_nll": ppl.nll.tolist(), "ppl": ppl.perplexity,
        "sink_positions": [list(s) for s in sinks.sink_positions],
        "sink_mass": sinks.sink_mass.nan_to_num(12345.0).tolist(), "alpha": sinks.alpha.nan_to_num(12345.0).tolist(),
        "k_norm_sink": sinks.k_norm_sink.nan_to_num(12345.0).tolist(),
        "k_cos_other": sinks.k_cos_other.nan_to_num(12345.0).tolist(),
    }


def main(name: str, n: int, out: str) -> None:
    from mi_massive import _dist

    torch.manual_seed(0)
    if name.startswith("tiny-"):
        from mi_massive.testing import tiny_model

        model = tiny_model(name.removeprefix("tiny-"))
    else:
        from mi_massive import load_model

        model = load_model(name)
    found = results(model, PROMPTS[:n])
    found["world"] = _dist.world()[1]
    if _dist.is_main():
        with open(out, "w") as f:
            json.dump(found, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
    from mi_massive import _dist

    _dist.exit_program(0)  # under torchrun: no interpreter teardown (see exit_program)
