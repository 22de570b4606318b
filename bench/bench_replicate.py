"""What the replication's model costs: ResNet-34 at 320 px, measured on this machine's CPU.

1. Activation memory per training image: the bytes of every leaf module's output in one
   forward pass (what autograd keeps for the backward pass, about), in float32 and in
   mixed precision (half of it: convolution and batch-norm outputs are bf16/fp16 there),
   plus parameters, gradients and Adam's two moments. From these, the memory a GPU needs
   for a batch of 256 (one GPU) or 256 / N (N GPUs).
2. Forward FLOPs per image (``torch.utils.flop_counter``), the arithmetic behind the time
   estimates in README.md.
3. Training images/s of ``cxrlab.core.replicate``'s own step on this CPU (float32,
   channels-last) and the peak resident memory of the process.

Run under ``nice``: ``nice .venv/bin/python bench/bench_replicate.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cxrlab.core.replicate import Precision, train_step
from cxrlab.core.models import build_model


def activation_bytes_per_image(model: nn.Module, size: int) -> int:
    """Bytes of all leaf-module outputs for one ``size``-px image in float32."""
    total = 0

    def hook(_module, _inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    with torch.no_grad():
        model.train()(torch.zeros(1, 1, size, size).contiguous(memory_format=torch.channels_last))
    for handle in handles:
        handle.remove()
    return total


def forward_flops(model: nn.Module, size: int) -> int:
    """FLOPs of one forward pass for one image (multiply-add = 2 FLOPs)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, 1, size, size))
    return int(counter.get_total_flops())


def cpu_training_speed(model: nn.Module, size: int, batch: int, steps: int) -> float:
    """Images/s of the replication's training step on the CPU (after one warm-up step)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    precision = Precision(torch.device("cpu"))
    x = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8)
    y = torch.randint(0, 3, (batch,))
    model.train()
    train_step(model, optimizer, precision, x, y, torch.device("cpu"))
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, precision, x, y, torch.device("cpu"))
    return batch * steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8, help="CPU timing batch")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    model = build_model("resnet34", 3, pretrained=False)
    model.dropout.p = 0.0
    n_params = sum(p.numel() for p in model.parameters())
    act = activation_bytes_per_image(model, args.size)
    flops = forward_flops(model, args.size)
    state_mb = n_params * 16 / 2**20                    # weights + grads + Adam m and v, fp32
    rows = {"size": args.size, "params_m": round(n_params / 1e6, 2),
            "forward_gflops_per_image": round(flops / 1e9, 2),
            "train_gflops_per_image": round(3 * flops / 1e9, 2),
            "activations_mb_per_image_fp32": round(act / 2**20, 1),
            "activations_mb_per_image_amp": round(act / 2 / 2**20, 1),
            "weights_grads_adam_mb": round(state_mb, 0)}
    for world in (1, 2, 4, 8):
        per_gpu = 256 // world
        rows[f"gpu_gb_batch256_over_{world}_amp"] = round(
            (per_gpu * act / 2 + n_params * 16) / 2**30, 1)
    load = os.getloadavg()[0]
    speed = cpu_training_speed(model, args.size, args.batch, args.steps)
    rows.update(cpu_train_images_per_s=round(speed, 2), cpu_threads=torch.get_num_threads(),
                cpu_batch=args.batch, load_average=round(load, 1),
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
