#!/usr/bin/env bash
# Every pretext task on CIFAR-10 at one small CPU budget (NIN width 32, 10,000 training
# images, a comparable few minutes of pretraining per task on 2 cores: epochs differ because
# the tasks' costs per image differ by 30×), each evaluated by kNN and
# per-layer linear probes on 10,000 labelled train / 10,000 test images, beside the same
# NIN at random init. Usage: scripts/tasks-study.sh CIFAR10_DIR OUT_DIR
set -euo pipefail
data=${1:?CIFAR-10 folder}
out=${2:?output folder}
bin=${PRETEXT_BIN:-target/release/pretext}
common=(--data "$data" --backbone nin --width 32 --train-images 10000 --batch-size 128 -q)
eval_args=(--train-images 10000 --probe-epochs 30 -q)
mkdir -p "$out"
run() { # name, epochs, extra flags…
  local name=$1 epochs=$2
  shift 2
  if [ ! -f "$out/$name/eval/eval.json" ]; then
    if [ -f "$out/$name/config.toml" ]; then
      "$bin" pretrain --out "$out/$name" --resume -q
    else
      "$bin" pretrain "${common[@]}" --out "$out/$name" --epochs "$epochs" "$@"
    fi
    "$bin" eval --run "$out/$name" "${eval_args[@]}" > "$out/$name.eval.txt"
  fi
}
sgd=(--lr 0.03 --schedule cosine)
run rotation 2 --task rotation "${sgd[@]}"
run jigsaw 12 --task jigsaw "${sgd[@]}"
run relative-position 30 --task relative-position "${sgd[@]}"
run inpainting 2 --task inpainting
run colorization 4 --task colorization "${sgd[@]}"
[ -f "$out/rotation/eval-random-init/eval.json" ] ||
  "$bin" eval --run "$out/rotation" --random-init "${eval_args[@]}" > "$out/random-init.eval.txt"
