"""Smaller training sets of the lab's offline text, with the same held-out text: does fresh text move the ratio?

    python benchmarks/text_subsets.py --out .runs/data [--fractions 1 2 4 8]

Writes OUT/mix_1of{k}.jsonl.gz for each k: every k-th training text of ``wiki-en+lee-news+linux-doc`` (the lab's
offline mix, whose every 20th text per corpus is held out) at the file's training places, and the mix's held-out
texts, in their order, at its held-out places (`--data file:PATH` holds out every 20th text of a file). So the
held-out windows the lab scans are the same for every k (the first held-out tokens; a file with fewer texts has
fewer of them), and k = 1 gives the named mix's own training and held-out streams.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from mi_massive.train.data import is_held_out

CORPORA = ("wiki-en", "lee-news", "linux-doc")


def split(corpora: tuple[str, ...] = CORPORA) -> tuple[list[str], list[str]]:
    """(training texts, held-out texts) of the mix, in the order `corpus_tokens` reads them."""
    from mi_massive.corpus import load_corpus

    train, held = [], []
    for name in corpora:
        for i, text in enumerate(load_corpus(name)):
            (held if is_held_out(i) else train).append(text)
    return train, held


def interleave(train: list[str], held: list[str]) -> list[str]:
    """Texts in file order: `held` at the places the lab holds out, `train` elsewhere, until the training texts run
    out."""
    out, t, h = [], iter(train), iter(held)
    for i in range(len(train) + len(held)):
        nxt = next(h, None) if is_held_out(i) else next(t, None)
        if nxt is None:
            break
        out.append(nxt)
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--fractions", nargs="+", type=int, default=[1, 2, 4, 8])
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, held = split()
    for k in args.fractions:
        texts = interleave(train[::k], held)
        path = out / f"mix_1of{k}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            for text in texts:
                fh.write(json.dumps({"text": text}) + "\n")
        print(f"{path}: {len(texts)} texts ({len(train[::k])} training, {len(texts) - len(train[::k])} held out)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
