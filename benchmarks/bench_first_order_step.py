"""Step time of natgrad.optim.Adam against torch.optim.Adam(foreach=True).

Times ``optimizer.step()`` alone (gradients are filled once, no backward pass) on an
MLP of about 10M parameters. The two optimizers alternate step by step so that both
see the same machine load; the script prints the median step time of each and their
ratio. Usage::

    .venv/bin/python benchmarks/bench_first_order_step.py [--steps 200] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

import natgrad


def build_model(width: int, depth: int) -> nn.Module:
    """A stack of ``depth`` square Linear layers of size ``width`` plus input and output layers."""
    layers = [nn.Linear(512, width)]
    layers += [nn.Linear(width, width) for _ in range(depth)]
    layers += [nn.Linear(width, 10)]
    return nn.Sequential(*layers)


def fill_gradients(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.grad = torch.randn(param.shape, generator=generator).to(param.device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(optimizer: torch.optim.Optimizer, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    optimizer.step()
    synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per optimizer")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per optimizer")
    parser.add_argument("--width", type=int, default=1536)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    ours_model = build_model(args.width, args.depth).to(device)
    torch_model = copy.deepcopy(ours_model)
    fill_gradients(ours_model, seed=1)
    fill_gradients(torch_model, seed=1)
    optimizers = {
        "natgrad.optim.Adam": natgrad.optim.Adam(ours_model.parameters(), lr=1e-3),
        "torch.optim.Adam(foreach=True)": torch.optim.Adam(
            torch_model.parameters(), lr=1e-3, foreach=True
        ),
    }
    for optimizer in optimizers.values():
        for _ in range(args.warmup):
            optimizer.step()
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(args.steps):
        for name, optimizer in optimizers.items():
            times[name].append(timed_step(optimizer, device))

    parameters = sum(p.numel() for p in ours_model.parameters())
    tensors = len(list(ours_model.parameters()))
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"parameters={parameters} tensors={tensors} steps={args.steps} warmup={args.warmup}")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, median in medians.items():
        print(f"{name:34s} median step {median * 1e3:8.3f} ms")
    ours, theirs = medians.values()
    print(f"ratio natgrad / torch: {ours / theirs:.3f}")


if __name__ == "__main__":
    main()
