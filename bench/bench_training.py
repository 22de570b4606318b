"""Training speed on this machine: the image cache versus decoding PNGs, and images/s per model.

Two measurements (issue 5):

1. One training epoch of the demo small CNN over the same images, read (a) from the
   memory-mapped uint8 cache (:func:`cxrlab.core.cache.load_image_cache`, what the course uses) and
   (b) by decoding each PNG again in ``__getitem__`` (:func:`cxrlab.core.cache.decode_image`), which
   is what a loader without the cache does every epoch. Target: the cache at least 2x faster at
   64 px.
2. Training throughput (forward + backward + optimiser step, images/s, after warm-up batches)
   and prediction throughput (:func:`cxrlab.core.train.predict`) of every model in
   :mod:`cxrlab.core.models` at 64, 128 and 224 px on this machine's CPU threads.

Run: ``.venv/bin/python bench/bench_training.py`` (about 5 minutes on 2 cores). The synthetic
images are generated into a temporary folder first and deleted afterwards.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cxrlab.core.cache import decode_image, load_image_cache
from cxrlab.core.datasets import CXRDataset, default_augmentation
from cxrlab.core.models import build_model
from data_fetch.manifest import read_manifest
from data_fetch.synthetic import SyntheticConfig, generate_cohort

MODELS = ("smallcnn", "resnet18", "resnet34", "densenet121")


class DecodingDataset(Dataset):
    """The no-cache baseline: decode (and resize) the PNG on every access."""

    def __init__(self, paths: list[str], targets: np.ndarray, size: int) -> None:
        self.paths, self.targets, self.size = paths, targets, size
        self.augmentation = default_augmentation()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int):
        raw = decode_image(self.paths[item], self.size)
        return self.augmentation(raw), torch.tensor(int(self.targets[item]))


def one_epoch_seconds(dataset: Dataset, size: int, batch_size: int = 32) -> float:
    """Wall time of one training epoch of the small CNN over ``dataset``."""
    torch.manual_seed(0)
    model = build_model("smallcnn", 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def cache_versus_png(folder: Path, size: int) -> dict:
    """Epoch time from the cache and from PNG decoding (first epoch after a warm-up epoch)."""
    df = read_manifest(folder)
    targets = df["race"].map({"A": 0, "B": 1, "C": 2}).to_numpy()
    images = load_image_cache(df, size, folder / "cache", progress=False)
    cached = CXRDataset(images, targets, augment=True)
    decoding = DecodingDataset(list(df["abspath"]), targets, size)
    one_epoch_seconds(cached, size)                # warm-up (threads, page cache)
    t_cache = one_epoch_seconds(cached, size)
    t_png = one_epoch_seconds(decoding, size)
    return {"size": size, "images": len(df), "cache_s": t_cache, "png_s": t_png,
            "speed-up": t_png / t_cache}


def training_images_per_second(name: str, size: int, batch_size: int = 32, batches: int = 4) -> float:
    """Forward + backward + step throughput of ``name`` at ``size`` px (after 2 warm-up batches)."""
    torch.manual_seed(0)
    model = build_model(name, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(batch_size, 1, size, size)
    y = torch.randint(0, 3, (batch_size,))
    for i in range(batches + 2):
        if i == 2:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return batches * batch_size / (time.perf_counter() - start)


def inference_images_per_second(name: str, size: int, images: int = 256) -> float:
    """:func:`cxrlab.core.train.predict` throughput of ``name`` at ``size`` px (batches by the pixel
    budget, :data:`cxrlab.core.models.INFERENCE_PIXELS`), after one warm-up call."""
    from cxrlab.core.train import predict

    torch.manual_seed(0)
    model = build_model(name, 3)
    model.task = "multiclass"
    x = np.random.default_rng(0).integers(0, 256, (images, size, size), dtype=np.uint8)
    predict(model, x[:8])
    start = time.perf_counter()
    predict(model, x)
    return images / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: print both tables as Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--patients", type=int, default=400, help="cohort for the cache test")
    args = parser.parse_args(argv)
    print(f"{platform.node()}: torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        # (PNG size on disk, training size): synthetic PNGs are written at the preset size, real
        # radiographs are 1024 px or more, so the second pair is closer to real data
        for source, size, patients in ((64, 64, args.patients), (256, 64, args.patients // 4),
                                       (256, 128, args.patients // 4),
                                       (1024, 64, args.patients // 20)):
            folder = Path(tmp) / f"cohort{source}"
            if not folder.exists():
                generate_cohort(folder, SyntheticConfig(n_patients=patients, image_size=source),
                                progress=False)
            rows.append({"source": source, **cache_versus_png(folder, size)})
    print("\n| PNG size | training size | images | epoch from cache (s) | epoch decoding PNGs (s) | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['source']} | {r['size']} | {r['images']} | {r['cache_s']:.2f} | {r['png_s']:.2f} "
              f"| {r['speed-up']:.1f}x |")
    print("\n| model | " + " | ".join(f"train {s} px" for s in args.sizes) + " | "
          + " | ".join(f"predict {s} px" for s in args.sizes) + " |")
    print("|---|" + "---:|" * 2 * len(args.sizes))
    for name in args.models:
        rates = [training_images_per_second(name, s, batches=2 if s >= 224 else 4) for s in args.sizes]
        rates += [inference_images_per_second(name, s, images=64 if s >= 224 else 256)
                  for s in args.sizes]
        print(f"| {name} | " + " | ".join(f"{r:.0f}" for r in rates) + " |", flush=True)


if __name__ == "__main__":
    main()
