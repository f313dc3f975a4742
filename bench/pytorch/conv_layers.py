"""Each convolution layer of a bench network alone in PyTorch: forward, input gradient and
weight gradient, batch 128, median of 5 calls, in NCHW and channels_last. The same layers
as `benches/conv_layers.rs`; run the two in the same sitting:

    python3 bench/pytorch/conv_layers.py [alexnet|resnet18-cifar|resnet18|nin<width>] [threads]
"""
import sys
import time

import torch

LAYERS = {
    # (input channels, input side, output channels, kernel, stride, padding)
    "alexnet": [(3, 32, 64, 5, 1, 2), (64, 16, 192, 5, 1, 2), (192, 8, 384, 3, 1, 1),
                (384, 8, 256, 3, 1, 1), (256, 8, 256, 3, 1, 1)],
    "resnet18-cifar": [(64, 32, 64, 3, 1, 1), (128, 16, 128, 3, 1, 1),
                       (256, 8, 256, 3, 1, 1), (512, 4, 512, 3, 1, 1)],
    "resnet18": [(3, 32, 64, 7, 2, 3), (64, 8, 64, 3, 1, 1), (128, 4, 128, 3, 1, 1),
                 (256, 2, 256, 3, 1, 1), (512, 1, 512, 3, 1, 1)],
}


def nin(width):
    """RotNet's NIN at this width, as `benches/conv_layers.rs` lists it."""
    w1, w2, w3 = width, max(width * 160 // 192, 1), max(width // 2, 1)
    v = [(3, 32, w1, 5, 1, 2), (w1, 32, w2, 1, 1, 0), (w2, 32, w3, 1, 1, 0),
         (w3, 16, w1, 5, 1, 2), (w1, 16, w1, 1, 1, 0), (w1, 16, w1, 1, 1, 0)]
    for _ in range(2):
        v += [(w1, 8, w1, 3, 1, 1), (w1, 8, w1, 1, 1, 0), (w1, 8, w1, 1, 1, 0)]
    return v


def median_time(f):
    f()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return sorted(times)[2]


def main():
    network = sys.argv[1] if len(sys.argv) > 1 else "alexnet"
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    torch.set_num_threads(threads)
    batch = 128
    for name, layout in [("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)]:
        print(f"{network}, {name}, batch {batch}, {threads} threads, median of 5 (ms, and GFLOP/s)")
        print("| layer | forward | input gradient | weight gradient |")
        print("|---|---|---|---|")
        total = [0.0, 0.0, 0.0]
        layers = nin(int(network[3:])) if network.startswith("nin") else LAYERS[network]
        for c_in, side, c_out, k, s, p in layers:
            x = torch.randn(batch, c_in, side, side).to(memory_format=layout)
            w = torch.randn(c_out, c_in, k, k).to(memory_format=layout)
            y = torch.nn.functional.conv2d(x, w, None, s, p)
            dy = torch.randn_like(y).to(memory_format=layout)
            flop = 2 * batch * c_out * y.shape[2] * y.shape[3] * c_in * k * k
            args = (dy, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], 1)
            passes = [
                lambda: torch.nn.functional.conv2d(x, w, None, s, p),
                lambda: torch.ops.aten.convolution_backward(*args, [True, False, False]),
                lambda: torch.ops.aten.convolution_backward(*args, [False, True, False]),
            ]
            cells = []
            for i, f in enumerate(passes):
                m = median_time(f)
                total[i] += m
                cells.append(f"{m * 1e3:.1f} ({flop / m / 1e9:.0f})")
            print(f"| {c_in}→{c_out} {k}×{k}/{s} on {side}×{side} | " + " | ".join(cells) + " |")
        print("| all | " + " | ".join(f"{t * 1e3:.1f}" for t in total) + " |\n")


if __name__ == "__main__":
    main()
