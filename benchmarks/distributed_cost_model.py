"""docs/DISTRIBUTED.md's cost model of one data-parallel K-FAC step, worked through.

Per step and GPU, for N GPUs (ring/tree all-reduce: t(bytes) = 2 alpha log2 N +
2 (N - 1) / N * bytes / B; a broadcast of everyone's share to everyone, i.e. an
all-gather: t = alpha log2 N + (N - 1) / N * bytes / B):

- gradient all-reduce, every step: 4 P bytes (float32 gradients);
- factor all-reduce, every ``stat_every`` steps: the upper triangles,
  4 sum_l (d_A (d_A + 1) / 2 + d_G (d_G + 1) / 2) bytes;
- "broadcast" mode, every ``inv_every`` steps: the inverses, 4 sum_l (d_A^2 + d_G^2)
  bytes gathered from their owners; inversion time max over ranks of c sum d^3 (LPT);
- "gather" mode, every step: the preconditioned gradients, 4 P_tracked bytes gathered;
  the preconditioning (2 (d_G^2 d_A + d_G d_A^2) flops per layer) split over the ranks.

Compute (forward/backward, preconditioning) comes from throughput figures; every
hardware constant is a command-line option, defaulted to the H100 cluster figures
named in docs/DISTRIBUTED.md (assumptions, not measurements of this machine). Usage::

    python benchmarks/distributed_cost_model.py [--inversion-c 5e-14] [--inter-gbs 40]
"""

from __future__ import annotations

import argparse
import math

from natgrad.distributed.assignment import assign_longest_first, rank_loads


def resnet50_layers() -> list[tuple[int, int]]:
    """(d_A, d_G) of every conv/linear layer of ResNet-50 (convs without bias)."""
    layers = [(3 * 7 * 7, 64)]
    channels = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True):
        for block in range(blocks):
            layers += [(channels, width), (9 * width, width), (width, 4 * width)]
            if block == 0:
                layers.append((channels, 4 * width))
            channels = 4 * width
    return layers + [(2048 + 1, 1000)]


def gpt2_small_layers() -> list[tuple[int, int]]:
    """(d_A, d_G) of the 48 Linear layers of GPT-2 small (with bias); the tied 50257-way
    output layer and the embeddings are left to the first-order fallback."""
    block = [(769, 2304), (769, 768), (769, 3072), (3073, 768)]
    return block * 12


MODELS = {
    # name: (layers, all parameters, per-GPU forward/backward seconds, batch per GPU)
    "ResNet-50": (resnet50_layers, 25_557_032, 64 / 2800, "64 images"),
    "GPT-2 small": (gpt2_small_layers, 124_439_808, 0.015, "8 x 1024 tokens"),
}


def all_reduce(nbytes: float, n: int, alpha: float, bandwidth: float) -> float:
    return 2 * alpha * math.log2(n) + 2 * (n - 1) / n * nbytes / bandwidth


def all_gather(nbytes: float, n: int, alpha: float, bandwidth: float) -> float:
    return alpha * math.log2(n) + (n - 1) / n * nbytes / bandwidth


def step_costs(name: str, n: int, args) -> dict[str, float]:
    build, params, compute_s, _ = MODELS[name]
    layers = build()
    bandwidth = (args.intra_gbs if n <= 8 else args.inter_gbs) * 1e9
    alpha = args.alpha_us * 1e-6
    tracked = sum(a * g for a, g in layers)
    triangles = 4 * sum(a * (a + 1) // 2 + g * (g + 1) // 2 for a, g in layers)
    squares = 4 * sum(a * a + g * g for a, g in layers)
    costs = [args.inversion_c * (a**3 + g**3) for a, g in layers]
    inversion = max(rank_loads(costs, assign_longest_first(costs, n), n))
    precondition = sum(2 * (g * g * a + g * a * a) for a, g in layers) / (args.tflops * 1e12)
    return {
        "compute": compute_s,
        "gradients": all_reduce(4 * params, n, alpha, bandwidth),
        "factors": all_reduce(triangles, n, alpha, bandwidth) / args.stat_every,
        "inversion": inversion / args.inv_every,
        "inverse broadcast": all_gather(squares, n, alpha, bandwidth) / args.inv_every,
        "precondition": precondition,
        "gradient gather": all_gather(4 * tracked, n, alpha, bandwidth),
        "sizes": (params, tracked, triangles, squares, sum(costs) / args.inversion_c),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intra-gbs", type=float, default=150.0, help="GB/s within a node")
    parser.add_argument("--inter-gbs", type=float, default=40.0, help="GB/s per GPU across nodes")
    parser.add_argument("--alpha-us", type=float, default=20.0, help="latency per hop (us)")
    parser.add_argument("--inversion-c", type=float, default=5e-14, help="seconds per d^3")
    parser.add_argument("--tflops", type=float, default=50.0, help="float32 GEMM TFLOP/s")
    parser.add_argument("--stat-every", type=int, default=2)
    parser.add_argument("--inv-every", type=int, default=20)
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 16, 64, 256])
    args = parser.parse_args()
    for name in MODELS:
        params, tracked, triangles, squares, cubes = step_costs(name, 8, args)["sizes"]
        print(
            f"\n{name} ({MODELS[name][3]} per GPU): P = {params / 1e6:.1f} M, tracked "
            f"{tracked / 1e6:.1f} M, factor triangles {triangles / 2**20:.0f} MiB, inverses "
            f"{squares / 2**20:.0f} MiB, sum d^3 = {cubes:.3g}"
        )
        print(
            "| GPUs | fwd/bwd | grad all-reduce | factor all-reduce | inversion (sync) "
            "| inverse bcast | precondition | broadcast mode | gather mode: gather, precond |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in args.gpus:
            c = step_costs(name, n, args)
            sgd = c["compute"] + c["gradients"]
            broadcast = sgd + c["factors"] + c["inversion"] + c["inverse broadcast"]
            broadcast += c["precondition"]
            gather = sgd + c["factors"] + c["inversion"] + c["gradient gather"]
            gather += c["precondition"] / n
            ms = {k: 1e3 * v for k, v in c.items() if k != "sizes"}
            print(
                f"| {n} | {ms['compute']:.1f} | {ms['gradients']:.1f} | {ms['factors']:.1f} | "
                f"{ms['inversion']:.2f} | {ms['inverse broadcast']:.2f} | "
                f"{ms['precondition']:.2f} | {1e3 * broadcast:.1f} ({broadcast / sgd:.2f}x) | "
                f"{ms['gradient gather']:.1f}, {ms['precondition'] / n:.2f} -> "
                f"{1e3 * gather:.1f} ({gather / sgd:.2f}x) |"
            )


if __name__ == "__main__":
    main()
