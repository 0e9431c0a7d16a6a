"""Cost of a Vision Transformer scan (detection + layer profile) against a bare forward over the same images.

    python benchmarks/vision_scan.py [--family dinov2_registers] [--images 32] [--repeat 5]

On the tiny planted models by default (no download); --model takes a Hub id or local directory instead.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--family", default="dinov2_registers")
    ap.add_argument("--model", default=None, help="a Hub id or local directory (default: the tiny planted model)")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from mi_massive.vision import _run, load_vision_model, prepare_images, sample_images
    from mi_massive.vision.detect import scan
    from mi_massive.vision.testing import tiny_vision_model

    torch.set_grad_enabled(False)
    model = load_vision_model(args.model) if args.model else tiny_vision_model(args.family)
    photos = sample_images(8)
    pixels = prepare_images(model, [photos[i % 8] for i in range(args.images)])

    def bare() -> None:  # the HF model's own forward, no hook attached
        for _, batch in _run.batches(pixels, args.batch_size):
            model.original_model(pixel_values=batch)

    def scanned() -> None:
        scan(model, pixels, batch_size=args.batch_size)

    for fn in (bare, scanned):  # warm-up
        fn()
    times: dict[str, list[float]] = {"bare": [], "scan": []}
    for _ in range(args.repeat):  # interleaved, so that drifts of a shared machine hit both
        for name, fn in (("bare", bare), ("scan", scanned)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    b, s = statistics.median(times["bare"]), statistics.median(times["scan"])
    print(f"{args.model or 'tiny-' + args.family}: {args.images} images of {tuple(pixels.shape[1:])}, batch "
          f"{args.batch_size}, {torch.get_num_threads()} threads: bare forward {b * 1e3:.1f} ms, scan {s * 1e3:.1f} ms, "
          f"ratio {s / b:.2f} (medians of {args.repeat})")


if __name__ == "__main__":
    main()
