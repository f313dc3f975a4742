#!/usr/bin/env bash
# GPU check: build with the `wgpu` feature (Vulkan; builds from crates.io alone), then run
# the synthetic backbone benchmark and a short rotation pretraining on the GPU, printing
# images/s. Usage: scripts/gpu-check.sh [CIFAR10_DIR] (default: unpack ../shared/data).
# Needs a Vulkan loader and driver on the machine (libvulkan1 + the vendor ICD).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-}
if [ -z "$data" ]; then
  data=target/gpu-check-data/cifar10
  if [ ! -d "$data/test" ]; then
    mkdir -p target/gpu-check-data
    tar xzf ../shared/data/cifar10-jpg.tar.gz -C target/gpu-check-data
  fi
fi
cargo build --release --features wgpu
bin=target/release/pretext
dev=${PRETEXT_GPU_DEVICE:-wgpu}
echo "== synthetic backbones on $dev (batch 128) =="
"$bin" --device "$dev" bench --warmup 3 --steps 10
echo "== pretext tasks on $dev, real data (NIN width 32, batch 128) =="
"$bin" --device "$dev" bench --tasks-only --data "$data" --steps 10
echo "== rotation pretraining on $dev: NIN width 96, 10,000 images, 1 epoch =="
out=$(mktemp -d)
"$bin" --device "$dev" --cache-dir "$out/cache" -q pretrain --data "$data" --out "$out/run" \
  --width 96 --train-images 10000 --epochs 1
tail -n 1 "$out/run/metrics.jsonl"
rm -rf "$out"
