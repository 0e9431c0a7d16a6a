"""Cost of a Vision Transformer scan (detection + layer profile) against a bare forward over the same images.

    python benchmarks/vision_scan.py [--family dinov2_registers] [--size tiny|base] [--images 32] [--repeat 5]

On the tiny planted models by default (no download): their cost is the hooks' and the bridge's Python, not
arithmetic. `--size base` builds a random model of ViT-B's shape (12 blocks, d_model 768, 224 x 224 images), where
the arithmetic counts; --model takes a Hub id or local directory instead.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--family", default="dinov2_registers")
    ap.add_argument("--model", default=None, help="a Hub id or local directory (default: the tiny planted model)")
    ap.add_argument("--size", choices=("tiny", "base"), default="tiny")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from mi_massive.vision import _run, load_vision_model, prepare_images, sample_images
    from mi_massive.vision.detect import scan
    from mi_massive.vision.testing import tiny_vision_model

    torch.set_grad_enabled(False)
    photos = sample_images(8)
    photos = [photos[i % 8] for i in range(args.images)]
    if args.model:
        model = load_vision_model(args.model)
        pixels = prepare_images(model, photos)
    elif args.size == "tiny":
        model = tiny_vision_model(args.family)
        pixels = prepare_images(model, photos)
    else:  # ViT-B's shape, random weights; photos resized and scaled to -1..1 by hand (the tiny processor is 32 px)
        patch = 14 if args.family == "dinov2_registers" else 16
        base = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=patch,
                    **({"mlp_ratio": 4} if args.family == "dinov2_registers" else {"intermediate_size": 3072}))
        model = tiny_vision_model(args.family, plant=False, overrides=base)
        pixels = torch.stack([torch.from_numpy(np.asarray(p.resize((224, 224)), dtype=np.float32)).permute(2, 0, 1)
                              / 127.5 - 1 for p in photos])

    def bare() -> None:  # the HF model's own forward, no hook attached
        for _, batch in _run.batches(pixels, args.batch_size):
            model.original_model(pixel_values=batch)

    def scanned() -> None:
        scan(model, pixels, batch_size=args.batch_size)

    for fn in (bare, scanned):  # warm-up
        fn()
    times: dict[tuple[str, str], list[float]] = {(n, c): [] for n in ("bare", "scan") for c in ("wall", "cpu")}
    for _ in range(args.repeat):  # interleaved, so that drifts of a shared machine hit both
        for name, fn in (("bare", bare), ("scan", scanned)):
            t, c = time.perf_counter(), time.process_time()  # CPU time: what a machine shared with others distorts less
            fn()
            times[(name, "wall")].append(time.perf_counter() - t)
            times[(name, "cpu")].append(time.process_time() - c)
    med = {k: statistics.median(v) for k, v in times.items()}
    label = args.model or (f"tiny-{args.family}" if args.size == "tiny" else f"random {args.family} of ViT-B's shape")
    print(f"{label}: {args.images} images of {tuple(pixels.shape[1:])}, batch "
          f"{args.batch_size}, {torch.get_num_threads()} threads, medians of {args.repeat}: bare forward "
          f"{med['bare', 'wall'] * 1e3:.1f} ms wall / {med['bare', 'cpu'] * 1e3:.1f} ms CPU, scan "
          f"{med['scan', 'wall'] * 1e3:.1f} / {med['scan', 'cpu'] * 1e3:.1f} ms; ratio "
          f"{med['scan', 'wall'] / med['bare', 'wall']:.2f} wall, {med['scan', 'cpu'] / med['bare', 'cpu']:.2f} CPU")


if __name__ == "__main__":
    main()
