"""PyTorch reference for pretext's rotation recipe on real images, the run issue 14 compares:

    pretext --threads 2 pretrain --task rotation --data DIR --width 96 --train-images 4096 --epochs 2
    python3 bench/pytorch/rotation.py --data DIR --threads 2 --train-images 4096 --epochs 2

Run by hand, never in CI (needs torch, numpy and Pillow). DIR is a class-per-folder image tree
with a train/ split (the shared CIFAR-10 tarball unpacked).

The same recipe as pretext's: RotNet's NIN (4 blocks, the width given) with global average
pooling and a 4-way linear head; each batch of 128 source images shown in all 4 rotations
(512 inputs); random crop of 32 with 4 px of zero padding and a horizontal flip per source
image, CIFAR-10's per-channel normalization; SGD lr 0.1, Nesterov momentum 0.9, weight decay
5e-4; cross-entropy. The learning rate is held at 0.1 (RotNet's first stage): the schedule
does not change the work per step.

PyTorch at its best on this machine: channels_last (see bench.py), the images decoded once
into memory before the clock starts (pretext decodes its JPEGs while it trains, through its
loader), and the augmentation done on whole batches of tensors in the training process. The
decode time is printed apart. Printed: source images/s over the whole training (every step,
the first included, as pretext's figure), and the last epoch's mean loss and rotation accuracy.
"""

import argparse
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Nin  # noqa: E402

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


def images(root, count, seed):
    """`count` images of root/train/<class>/*, chosen at random with `seed`, as uint8 NHWC."""
    train = os.path.join(root, "train")
    files = sorted(
        os.path.join(train, c, f)
        for c in sorted(os.listdir(train))
        for f in os.listdir(os.path.join(train, c))
    )
    random.Random(seed).shuffle(files)
    files = files[:count]
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def batch(raw, pad=4):
    """Random crop (zero padding `pad`) and flip per image, normalized, then all 4 rotations:
    [4n, 3, h, w] and the rotation labels."""
    x = torch.from_numpy(raw).permute(0, 3, 1, 2).float().div_(255)
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,))
    ox = torch.randint(0, 2 * pad + 1, (n,))
    cols = (ox.view(n, 1) + torch.arange(w)).view(n, 1, 1, w).expand(n, 3, h, w)
    crop = _rows(padded, oy, h).gather(3, cols)
    flip = torch.rand(n) < 0.5
    crop[flip] = crop[flip].flip(3)
    crop = (crop - MEAN) / STD
    x = torch.cat([torch.rot90(crop, k, (2, 3)) for k in range(4)])
    y = torch.arange(4).repeat_interleave(n)
    return x, y


def _rows(padded, oy, h):
    """Rows oy..oy+h of each padded image."""
    n, c, _, wp = padded.shape
    idx = (oy.view(n, 1) + torch.arange(h)).view(n, 1, h, 1).expand(n, c, h, wp)
    return padded.gather(2, idx)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-images", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--layout", default="channels_last", choices=["channels_last", "nchw"])
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    raw = images(a.data, a.train_images, a.seed)
    decode = time.perf_counter() - t0
    fmt = torch.channels_last if a.layout == "channels_last" else torch.contiguous_format
    model = Nin(a.width).to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model.train()
    rng = np.random.default_rng(a.seed)
    seen = 0
    t0 = time.perf_counter()
    for epoch in range(a.epochs):
        order = rng.permutation(len(raw))
        loss_sum, correct, inputs, steps = 0.0, 0, 0, 0
        for s in range(0, len(order), a.batch):
            x, y = batch(raw[order[s : s + a.batch]])
            x = x.contiguous(memory_format=fmt)
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            correct += (logits.argmax(1) == y).sum().item()
            inputs += len(y)
            steps += 1
            seen += len(y) // 4
        print(
            f"epoch {epoch + 1}: loss {loss_sum / steps:.4f}, rotation accuracy {correct / inputs:.4f}, "
            f"{seen / (time.perf_counter() - t0):.1f} source images/s so far",
            flush=True,
        )
    wall = time.perf_counter() - t0
    print(
        f"torch {torch.__version__}, {a.threads} threads, {a.layout}, NIN width {a.width}: "
        f"decoded {len(raw)} images in {decode:.1f} s; trained {a.epochs} epochs in {wall:.1f} s, "
        f"{seen / wall:.1f} source images/s ({4 * seen / wall:.1f} inputs/s)"
    )


if __name__ == "__main__":
    main()
