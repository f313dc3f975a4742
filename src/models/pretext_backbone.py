"""A backbone pretrained by pretext, as a PyTorch module.

Written by `pretext export` beside `backbone.safetensors` (the weights, in this module's
parameter names; ResNets in torchvision's) and `reference.safetensors` (an input and the
feature maps pretext computed for it). Needs PyTorch and the safetensors package:
`pip install torch safetensors`.

    import torch
    from pretext_backbone import load, normalize
    model = load()                     # weights from beside this file, in eval mode
    x = normalize(images)              # images: float RGB in [0, 1], N x C x H x W
    taps = model.forward_taps(x)       # the feature map at every tap (TAPS below)
    features = model(x)                # the last tap

A ResNet's weights also load into torchvision's own model, which has the same names and a
classifier the backbone lacks: `torchvision.models.resnet18().load_state_dict(
safetensors.torch.load_file("backbone.safetensors"), strict=False)` (missing: fc.weight,
fc.bias).

To check that this module computes what pretext computed, run it:

    python pretext_backbone.py

It feeds the input stored in reference.safetensors through the loaded network (eval mode:
batch norms use their running statistics, as pretext's evaluation does) and prints, per
tap, the largest absolute difference from pretext's output; it exits non-zero when one is
above 1e-4 of that tap's largest value.
"""

import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

# Filled in by `pretext export`: the backbone's configuration, its taps, and the
# normalization its inputs had in pretext.
CONFIG = json.loads(r"""{}""")

HERE = os.path.dirname(os.path.abspath(__file__))
TAPS = CONFIG.get("taps", [])


def normalize(images):
    """Normalize float RGB images in [0, 1] (N x C x H x W) as pretext did."""
    if CONFIG["input"] != "rgb":
        raise ValueError(
            f"this network takes pretext's {CONFIG['input']!r} input (CIE L* for lightness), "
            "not RGB: convert the images first, then normalize with CONFIG['normalize']"
        )
    mean = torch.tensor(CONFIG["normalize"]["mean"], dtype=images.dtype)
    std = torch.tensor(CONFIG["normalize"]["std"], dtype=images.dtype)
    return (images - mean[:, None, None]) / std[:, None, None]


class ConvBnRelu(nn.Module):
    def __init__(self, cin, cout, k, stride, pad):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, pad, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class NinBlock(nn.Module):
    def __init__(self, convs):
        super().__init__()
        self.convs = nn.ModuleList(convs)

    def forward(self, x):
        for c in self.convs:
            x = c(x)
        return x


class NIN(nn.Module):
    """RotNet's Network-in-Network (Gidaris et al. 2018); taps block1..blockN."""

    def __init__(self, in_channels=3, blocks=4, width=192):
        super().__init__()
        w1, w2, w3 = width, max(width * 160 // 192, 1), max(width // 2, 1)
        layers = [
            NinBlock(
                [
                    ConvBnRelu(in_channels, w1, 5, 1, 2),
                    ConvBnRelu(w1, w2, 1, 1, 0),
                    ConvBnRelu(w2, w3, 1, 1, 0),
                ]
            )
        ]
        for b in range(1, blocks):
            k, cin = (5, w3) if b == 1 else (3, w1)
            layers.append(
                NinBlock(
                    [
                        ConvBnRelu(cin, w1, k, 1, k // 2),
                        ConvBnRelu(w1, w1, 1, 1, 0),
                        ConvBnRelu(w1, w1, 1, 1, 0),
                    ]
                )
            )
        self.blocks = nn.ModuleList(layers)

    def forward_taps(self, x):
        taps = []
        for b, block in enumerate(self.blocks):
            x = block(x)
            if b == 0:
                x = F.max_pool2d(x, 3, 2, 1)
            elif b == 1:
                x = F.avg_pool2d(x, 3, 2, 1)
            taps.append(x)
        return taps

    def forward(self, x):
        return self.forward_taps(x)[-1]


class AlexNet(nn.Module):
    """AlexNet-style conv1..conv5 with batch norm; taps conv1..conv5."""

    def __init__(self, in_channels=3, input_size=224, width=64):
        super().__init__()
        w = [max(width * m // 64, 1) for m in (64, 192, 384, 256, 256)]
        self.small = input_size < 96
        if self.small:
            conv1 = ConvBnRelu(in_channels, w[0], 5, 1, 2)
        else:
            conv1 = ConvBnRelu(in_channels, w[0], 11, 4, 2)
        self.convs = nn.ModuleList(
            [
                conv1,
                ConvBnRelu(w[0], w[1], 5, 1, 2),
                ConvBnRelu(w[1], w[2], 3, 1, 1),
                ConvBnRelu(w[2], w[3], 3, 1, 1),
                ConvBnRelu(w[3], w[4], 3, 1, 1),
            ]
        )

    def forward_taps(self, x):
        taps = []
        pad = 1 if self.small else 0
        for i, c in enumerate(self.convs):
            x = c(x)
            if i in (0, 1, 4):
                x = F.max_pool2d(x, 3, 2, pad)
            taps.append(x)
        return taps

    def forward(self, x):
        return self.forward_taps(x)[-1]


def downsample(cin, cout, stride):
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(
        nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
    )


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample(cin, planes, stride)

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, 1, 0, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample(cin, planes * 4, stride)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """ResNet-18/50 in torchvision's parameter names, without the classifier; taps stem,
    layer1..layer4. The CIFAR stem is a 3x3 stride-1 conv without the max-pool."""

    def __init__(self, in_channels=3, depth=18, width=64, imagenet_stem=True):
        super().__init__()
        k, s, p = (7, 2, 3) if imagenet_stem else (3, 1, 1)
        self.conv1 = nn.Conv2d(in_channels, width, k, s, p, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.imagenet_stem = imagenet_stem
        counts, block = ([3, 4, 6, 3], Bottleneck) if depth == 50 else ([2, 2, 2, 2], BasicBlock)
        cin = width
        for l, count in enumerate(counts):
            planes = width << l
            blocks = []
            for i in range(count):
                blocks.append(block(cin, planes, 2 if i == 0 and l > 0 else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{l + 1}", nn.Sequential(*blocks))

    def forward_taps(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        if self.imagenet_stem:
            x = F.max_pool2d(x, 3, 2, 1)
        taps = [x]
        for l in range(1, 5):
            x = getattr(self, f"layer{l}")(x)
            taps.append(x)
        return taps

    def forward(self, x):
        return self.forward_taps(x)[-1]


def build():
    """The network of CONFIG, with fresh weights."""
    c = CONFIG["backbone"]
    arch = c["arch"]
    if arch == "nin":
        return NIN(c["in_channels"], c["blocks"], c["width"])
    if arch == "alexnet":
        return AlexNet(c["in_channels"], c["input_size"], c["width"])
    depth = 50 if arch == "resnet50" else 18
    return ResNet(c["in_channels"], depth, c["width"], arch != "resnet18-cifar")


def load(path=None):
    """The exported backbone in eval mode (weights: backbone.safetensors beside this file)."""
    model = build()
    model.load_state_dict(load_file(path or os.path.join(HERE, "backbone.safetensors")))
    return model.eval()


def check():
    """Compare with pretext's output on the reference input; True when every tap matches."""
    ref = load_file(os.path.join(HERE, "reference.safetensors"))
    model = load()
    with torch.no_grad():
        taps = model.forward_taps(ref["input"])
    ok = True
    for name, got in zip(TAPS, taps):
        want = ref["tap." + name]
        if got.shape != want.shape:
            print(f"{name}: shape {tuple(got.shape)}, pretext's {tuple(want.shape)}")
            ok = False
            continue
        diff = (got - want).abs().max().item()
        scale = want.abs().max().item()
        print(f"{name}: {tuple(got.shape)} max |difference| {diff:.3g} (largest |value| {scale:.3g})")
        ok = ok and diff <= 1e-4 * max(scale, 1e-12)
    print("matches pretext" if ok else "DIFFERS from pretext")
    return ok


if __name__ == "__main__":
    sys.exit(0 if check() else 1)
