#!/usr/bin/env bash
# The side-by-side run for a GPU machine, in one call (docs/performance.md). Prepare here first:
#   bash ../shared/device/prepare.sh
# then run on the device, carrying .gpu, with a limit that leaves room to rerun (order: PyTorch fp32, hadnet infer,
# pretrain, hadnet, conv, pretrain, infer and hadnet with tuned kernels, f16 inference with gather and tuned kernels,
# PyTorch TF32, a profiled pretrain step):
#   source .gpu/on-device.sh && bash tools/device_bench.sh
# Every result is appended at once to $OUT/bench.jsonl (hadnet and PyTorch lines alike), each step has its own time
# limit and the most important figures come first, so a run cut short still returns what it measured.
# SIZE and K override 160,192,160 and 32; BUDGET (seconds, default 540) bounds the whole script; PYTHON and
# TORCH_DEVICE (python3, cuda) let it be tried on a machine without a GPU.
set -uo pipefail
out=${OUT:-/tmp}/bench.jsonl
size=${SIZE:-160,192,160}
k=${K:-32}
end=$((SECONDS + ${BUDGET:-540}))

step() { # step LIMIT_SECONDS COMMAND...: runs COMMAND within LIMIT (and what is left of BUDGET), appending its JSON lines
  local limit=$1
  shift
  local left=$((end - SECONDS))
  ((left < limit)) && limit=$left
  if ((limit < 10)); then
    echo "skipped (budget spent): $*" >&2
    return
  fi
  echo "== ${*:2} (limit ${limit}s)" >&2
  timeout "$limit" "$@" | tee -a "$out" | grep -v "\"kernel\"" | cut -c1-220 >&2
  echo "   exit ${PIPESTATUS[0]}" >&2
}

torch=("${PYTHON:-python3}" .gpu/torch_reference.py bench --device "${TORCH_DEVICE:-cuda}" --size "$size" --k "$k")
hadnet=(deno task -q bench --size "$size" --k "$k")

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || echo "no nvidia-smi" >&2
for m in infer pretrain hadnet; do step 60 "${torch[@]}" --mode "$m" --tf32 off; done
step 120 "${hadnet[@]}" --mode infer --iters 5 --warmup 2
step 150 "${hadnet[@]}" --mode pretrain --iters 3 --warmup 1
step 150 "${hadnet[@]}" --mode hadnet --iters 2 --warmup 1
step 120 "${hadnet[@]}" --mode conv --iters 3 --warmup 1
# Each shape's faster kernel, measured on this GPU (--conv-kernel tuned; the "tune" lines give both times).
step 150 "${hadnet[@]}" --mode pretrain --iters 3 --warmup 1 --conv-kernel tuned
step 90 "${hadnet[@]}" --mode infer --iters 5 --warmup 2 --conv-kernel tuned
step 150 "${hadnet[@]}" --mode hadnet --iters 2 --warmup 1 --conv-kernel tuned # the discriminator's passes too
# Inference with f16 activations: the gather kernel, then each shape's faster kernel (the "tune" lines give both).
step 60 "${hadnet[@]}" --mode infer --iters 5 --warmup 2 --f16
step 90 "${hadnet[@]}" --mode infer --iters 5 --warmup 2 --f16 --conv-kernel tuned
for m in infer pretrain hadnet; do step 60 "${torch[@]}" --mode "$m" --tf32 on; done
step 150 "${hadnet[@]}" --mode pretrain --iters 1 --warmup 1 --profile
echo "results: $out ($(wc -l <"$out") lines)" >&2
