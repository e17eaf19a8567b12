"""Seconds per image: AnoGAN's latent mapping one image at a time vs a whole batch at once vs f-AnoGAN's encoder.

    python benchmarks/anogan_speed.py --image-size 64 --iters 50 --n-images 16 --device cpu

All three use the same DCGAN (trained briefly on bundled normal samples: the weights do not change the
cost), the same device, and the same number of mapping iterations. Writes OUT/anogan_speed.md.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cxrad.data import deduplicate, load_images
from cxrad.demo import sample_manifest
from cxrad.detectors.anogan import AnoGANDetector, FAnoGANDetector


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _load() -> str:
    try:
        import os
        return ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds): on a shared CPU the second is the steadier measure."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--iters", type=int, default=50, help="mapping iterations (both AnoGAN variants)")
    ap.add_argument("--n-images", type=int, default=16)
    ap.add_argument("--width", type=int, default=64, help="DCGAN width (64 = the DCGAN paper's)")
    ap.add_argument("--z-dim", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)

    df = deduplicate(sample_manifest())[0]
    settings = dict(image_size=args.image_size, width=args.width, z_dim=args.z_dim, epochs=1, device=args.device,
                    batch_size=args.n_images, seed=0)
    fan = FAnoGANDetector(**settings)
    train = load_images(df[df["orig_split"] == "train"].head(32), fan.prep)
    fan.fit(train)
    ano = AnoGANDetector(**settings, map_iters=args.iters)
    ano.generator_, ano.discriminator_ = fan.generator_, fan.discriminator_
    query = np.asarray(load_images(df[df["orig_split"] == "test"].head(args.n_images), fan.prep).images)
    n = len(query)
    device = fan._device()

    ano.map_latent(query[:2], iters=2)  # warm-up (allocations, cuDNN autotuning)
    fan._score(query[:2])
    rows = [
        ("AnoGAN mapping, one image at a time", args.iters, timed(lambda: ano.map_latent(query, batch_size=1), device)),
        (f"AnoGAN mapping, batched ({n} at once)", args.iters,
         timed(lambda: ano.map_latent(query, batch_size=n), device)),
        ("f-AnoGAN encoder, one forward pass", 0, timed(lambda: fan._score(query), device)),
    ]
    base = rows[0][2][0]
    lines = ["# AnoGAN latent mapping vs f-AnoGAN: seconds per image", "",
             f"{n} kermany224 sample images at {args.image_size} px, DCGAN width {args.width}, z length "
             f"{args.z_dim}, on {device_name(device)}; torch {torch.__version__}. The machine's load "
             f"average when it finished: {_load()}; wall seconds depend on other load on the machine, this "
             "process's CPU seconds much less so.", "",
             "| method | mapping iterations | seconds per image (wall) | CPU seconds per image | "
             "speed-up vs one at a time (wall) |",
             "|---|---|---|---|---|"]
    for name, iters, (wall, cpu) in rows:
        cpu_cell = f"{cpu / n:.4g}" if device.type == "cpu" else "—"
        lines.append(f"| {name} | {iters or '—'} | {wall / n:.4g} | {cpu_cell} | {base / wall:.1f}x |")
    lines += ["", f"Command: `python benchmarks/anogan_speed.py --image-size {args.image_size} --iters {args.iters} "
              f"--n-images {args.n_images} --width {args.width} --z-dim {args.z_dim} --device {args.device}`", ""]
    text = "\n".join(lines)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "anogan_speed.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
