"""Peak memory of corpus perplexity over 1 MB and 40 MB of text: streaming keeps it flat (issue 19).

Each size runs `mi_massive.perplexity` (max_chunks=None: the whole corpus) in its own process, peak RSS from
getrusage. What grew with the corpus was its tokenisation (before streaming, +1.4 GB of peak for 10 MB of text on
smollm2-135m's tokenizer), so the tokenizer is smollm2-135m's real one, from the model cache; the model is a
stand-in whose forward is one small embedding (ids folded into 64 classes), so that 40 MB (~10M tokens, ~40k
chunks) takes minutes on a 2-core CPU rather than hours.

    python benchmarks/perplexity_memory.py            # one line per size and the difference (bound: 300 MB)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time, types
import torch
from transformers import AutoTokenizer
from mi_massive import perplexity
from mi_massive.models import embedded_path
torch.set_num_threads(1)

class Folded:
    "smollm2's tokenizer, its ids folded into the stand-in's 64 classes"
    def __init__(self, tok):
        self.tok, self.bos_token_id = tok, 1
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [i % 64 for i in self.tok(text, add_special_tokens=False)["input_ids"]]}

class StandIn(torch.nn.Module):
    hook_dict = {}
    def __init__(self, tok):
        super().__init__()
        self.embed = torch.nn.Embedding(64, 64)
        self.tokenizer = Folded(tok)
        self.cfg = types.SimpleNamespace(n_ctx=2048, d_vocab=64, device="cpu", default_prepend_bos=True,
                                         model_name="smollm2-tokenizer-stand-in", dtype=torch.float32)
    def to_tokens(self, *a, **k):
        raise NotImplementedError
    def forward(self, tokens, return_type="logits"):
        return self.embed(tokens)  # (batch, pos, 64)

mb = float(sys.argv[1])
model = StandIn(AutoTokenizer.from_pretrained(embedded_path("smollm2-135m"))).eval()
para = ("Summer is warm and winter is cold; the quick brown fox jumps over the lazy dog while the river runs "
        "past the old town, the market square and the stone bridge. ")
texts = [para * 20] * int(mb * 1e6 / (len(para) * 20))  # paragraphs of ~3 kB
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
p = perplexity(model, texts, seq_len=256, batch_size=8, progress=False)
print(json.dumps({"mb": mb, "chars": sum(map(len, texts)), "chunks": len(p.nll), "seconds": time.perf_counter() - t0,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "before_call_mb": base / 1024}))
"""


def measure(mb: float) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(mb)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    rows = [measure(mb) for mb in (1, 40)]
    for r in rows:
        print(f"{r['mb']:>4g} MB of text ({r['chars']:,} characters, {r['chunks']:,} chunks of 256 tokens): peak RSS "
              f"{r['peak_mb']:.0f} MB (before the call, the text built: {r['before_call_mb']:.0f} MB), "
              f"{r['seconds']:.0f} s")
    d = rows[1]["peak_mb"] - rows[0]["peak_mb"]
    print(f"peak RSS, 40 MB minus 1 MB: {d:.0f} MB (the 39 MB more of text itself included; bound 300 MB)")


if __name__ == "__main__":
    t = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t:.0f} s")
