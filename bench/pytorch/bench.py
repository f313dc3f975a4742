"""PyTorch reference for `pretext bench`: the same networks, batches and optimizer, timed
the same way (median of timed steps after warm-up), so BENCHMARKS.md can hold pretext /
PyTorch ratios measured in one sitting on one machine.

Run by hand, never in CI:
    pip install torch          # CPU wheels are enough
    python bench/pytorch/bench.py --threads 2 --runs 5
    cargo run --release -- --threads 2 bench

PyTorch at its best: every network is timed in both memory layouts, NCHW (PyTorch's
default) and channels_last (NHWC, much faster for these networks on x86 CPUs), and with
--compile also under torch.compile; the best of them is the reference a pretext ratio is
taken against. With --runs N each setting is timed in N fresh processes and the median
and the range (min-max) of their images/s are printed.

Networks (as src/models/): RotNet's NIN (blocks of conv 5x5|3x3 → 1x1 → 1x1, BN + ReLU,
max-pool 3/2 after block 1, avg-pool 3/2 after block 2; widths w, w·160/192, w/2 in block
1), AlexNet-64 (small-input form: conv1 5x5 stride 1, BN + ReLU after every conv, max-pool
3/2 pad 1 after conv1, conv2 and conv5), the CIFAR ResNet-18 (3x3 stem, no max-pool) and the
ImageNet-stem ResNet-18/50; each with global average pooling and a 4-way linear head. The
ResNets are written out here as torchvision builds them (stride on the 3x3 conv of a
bottleneck, a 1x1 conv + BN shortcut where the shape changes), so torchvision is not needed. Synthetic N(0,1) inputs of 3x32x32,
SGD lr 0.01, momentum 0.9 Nesterov, weight decay 5e-4, cross-entropy.
"""

import argparse
import multiprocessing
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def cbr(cin, cout, k, stride=1, pad=None):
    pad = k // 2 if pad is None else pad
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, pad, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Nin(nn.Module):
    def __init__(self, width=192, blocks=4, classes=4):
        super().__init__()
        w1, w2, w3 = width, max(width * 160 // 192, 1), max(width // 2, 1)
        layers = [cbr(3, w1, 5), cbr(w1, w2, 1), cbr(w2, w3, 1), nn.MaxPool2d(3, 2, 1)]
        for b in range(1, blocks):
            k, cin = (5, w3) if b == 1 else (3, w1)
            layers += [cbr(cin, w1, k), cbr(w1, w1, 1), cbr(w1, w1, 1)]
            if b == 1:
                layers.append(nn.AvgPool2d(3, 2, 1))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(w1, classes)

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(self.body(x), 1).flatten(1))


class AlexNet(nn.Module):
    """src/models/alexnet.rs for inputs under 96 px."""

    def __init__(self, width=64, classes=4):
        super().__init__()
        w = [max(width * m // 64, 1) for m in (64, 192, 384, 256, 256)]
        pool = lambda: nn.MaxPool2d(3, 2, 1)  # noqa: E731
        self.body = nn.Sequential(
            cbr(3, w[0], 5), pool(),
            cbr(w[0], w[1], 5), pool(),
            cbr(w[1], w[2], 3), cbr(w[2], w[3], 3), cbr(w[3], w[4], 3), pool(),
        )
        self.head = nn.Linear(w[4], classes)

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(self.body(x), 1).flatten(1))


def conv_bn(cin, cout, k, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class Block(nn.Module):
    """torchvision's BasicBlock (bottleneck=False) or Bottleneck (expansion 4)."""

    def __init__(self, cin, planes, stride, bottleneck):
        super().__init__()
        cout = planes * (4 if bottleneck else 1)
        if bottleneck:
            self.body = nn.Sequential(
                cbr(cin, planes, 1), cbr(planes, planes, 3, stride), conv_bn(planes, cout, 1, 1)
            )
        else:
            self.body = nn.Sequential(cbr(cin, planes, 3, stride), conv_bn(planes, cout, 3, 1))
        self.shortcut = (
            conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """src/models/resnet.rs: torchvision's ResNet-18/50, or with the CIFAR stem (3x3 stride
    1, no max-pool)."""

    def __init__(self, depth, cifar_stem, width=64, classes=4):
        super().__init__()
        counts, bottleneck = ((3, 4, 6, 3), True) if depth == 50 else ((2, 2, 2, 2), False)
        layers = [cbr(3, width, 3) if cifar_stem else cbr(3, width, 7, 2)]
        if not cifar_stem:
            layers.append(nn.MaxPool2d(3, 2, 1))
        cin = width
        for l, count in enumerate(counts):
            for i in range(count):
                planes = width << l
                layers.append(Block(cin, planes, 2 if i == 0 and l > 0 else 1, bottleneck))
                cin = planes * (4 if bottleneck else 1)
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(self.body(x), 1).flatten(1))


def measure(name, model, batch, warmup, steps, layout="nchw", compiled=False):
    x = torch.randn(batch, 3, 32, 32)
    y = torch.arange(batch) % 4
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    if compiled:
        model = torch.compile(model)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    model.train()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    train = batch / statistics.median(times)
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    infer = batch / statistics.median(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return name, train, infer, peak


NETS = {
    "NIN width 192": lambda: Nin(192),
    "NIN width 96": lambda: Nin(96),
    "NIN width 32": lambda: Nin(32),
    "AlexNet width 64": lambda: AlexNet(64),
    "ResNet-18 CIFAR stem": lambda: ResNet(18, True),
    "ResNet-18 ImageNet stem": lambda: ResNet(18, False),
    "ResNet-50 ImageNet stem": lambda: ResNet(50, False),
}


def child(name, threads, batch, warmup, steps, layout, compiled):
    """One network in a fresh process, so its peak RSS is its own."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return measure(name, NETS[name](), batch, warmup, steps, layout, compiled)


def spread(values):
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--runs", type=int, default=1, help="fresh processes per setting")
    p.add_argument("--layouts", default="nchw,channels_last")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--only", default="", help="comma-separated network names")
    a = p.parse_args()
    names = [n for n in NETS if not a.only or n in a.only.split(",")]
    print(f"torch {torch.__version__}, {a.threads} threads, batch {a.batch}, {a.runs} run(s) each")
    print("| network | setting | train img/s median (range) | inference img/s median (range) | peak RSS MiB |")
    print("|---|---|---|---|---|")
    settings = [(layout, False) for layout in a.layouts.split(",")]
    if a.compile:
        settings += [(layout, True) for layout in a.layouts.split(",")]
    ctx = multiprocessing.get_context("spawn")
    for name in names:
        best = None
        for layout, compiled in settings:
            rows = []
            for _ in range(a.runs):
                with ctx.Pool(1) as pool:
                    try:
                        rows.append(pool.apply(
                            child,
                            (name, a.threads, a.batch, a.warmup, a.steps, layout, compiled),
                        ))
                    except Exception as e:  # torch.compile may not work on a machine
                        print(f"| {name} | {layout}{' compiled' if compiled else ''} | failed: {e} | | |")
                        break
            if not rows:
                continue
            tr = [r[1] for r in rows]
            inf = [r[2] for r in rows]
            setting = layout + (" compiled" if compiled else "")
            print(
                f"| {name} | {setting} | {spread(tr)} | {spread(inf)} | {max(r[3] for r in rows):.0f} |",
                flush=True,
            )
            if best is None or statistics.median(tr) > best[1]:
                best = (setting, statistics.median(tr), statistics.median(inf))
        if best:
            print(f"| {name} | **best: {best[0]}** | {best[1]:.1f} | {best[2]:.1f} | |", flush=True)


if __name__ == "__main__":
    main()
