#!/usr/bin/env bash
# The side-by-side run for a GPU machine (docs/performance.md). Prepare here first:
#   bash ../shared/device/prepare.sh
# then run on the device, carrying .gpu, with a limit that leaves room to rerun:
#   source .gpu/on-device.sh && bash tools/device_bench.sh [GROUP...]
# Groups, run in the order given (default: all, in this order):
#   check      the tests in $CHECK (default: the GPU kernel tests and the PyTorch golden parity) on this adapter (log:
#              $OUT/check.log); the parity tests need ../shared's fixtures and torch_reference.py, which do not travel:
#              copy them into .gpu/shared here, and this group puts them back in ../shared there
#   torch      PyTorch fp32 (TF32 off): infer, pretrain, hadnet
#   conv       every convolution shape, both kernels, each pass
#   torchconv  PyTorch fp32 on the same convolution passes (tools/torch_conv_bench.py)
#   tuned      infer, pretrain, hadnet with --conv-kernel tuned (its "tune" lines give both kernels' times)
#   gather     infer, pretrain, hadnet with the gather kernels (--conv-kernel gather)
#   cl         infer, pretrain, hadnet with --conv-kernel channels-last
#   pool       pretrain and hadnet with tuned kernels and HADNET_POOL_RESERVE=1.5 (the bound before 3: more buffers
#              made per step, less memory held)
#   profile    one inference, pre-training step and HAD-Net step with tuned kernels, GPU time per kernel
#   f16        inference with f16 activations: gather kernel, then tuned
#   tf32       PyTorch with TF32 on: infer, pretrain, hadnet
# Every result is appended at once to $OUT/bench.jsonl (hadnet and PyTorch lines alike), and each step has its own time
# limit, so a run cut short still returns what it measured. SIZE and K override 160,192,160 and 32; BUDGET (seconds,
# default 540) bounds the whole script; PYTHON and TORCH_DEVICE (python3, cuda) let it be tried without a GPU.
set -uo pipefail
out=${OUT:-/tmp}/bench.jsonl
size=${SIZE:-160,192,160}
k=${K:-32}
end=$((SECONDS + ${BUDGET:-540}))

left() { # left LIMIT: LIMIT, or what is left of BUDGET if less; non-zero status when under 10 s are left
  local limit=$1 rest=$((end - SECONDS))
  ((rest < limit)) && limit=$rest
  echo "$limit"
  ((limit >= 10))
}

step() { # step LIMIT_SECONDS COMMAND...: runs COMMAND within LIMIT (and what is left of BUDGET), appending its JSON lines
  local limit
  limit=$(left "$1") || {
    echo "skipped (budget spent): ${*:2}" >&2
    return
  }
  shift
  echo "== $* (limit ${limit}s)" >&2
  timeout "$limit" "$@" | tee -a "$out" | grep -v "\"kernel\"" | cut -c1-220 >&2
  echo "   exit ${PIPESTATUS[0]}" >&2
}

torch=("${PYTHON:-python3}" .gpu/torch_reference.py bench --device "${TORCH_DEVICE:-cuda}" --size "$size" --k "$k")
hadnet=(deno task -q bench --size "$size" --k "$k")

check() {
  local limit log=${OUT:-/tmp}/check.log
  limit=$(left 120) || {
    echo "skipped (budget spent): tests" >&2
    return
  }
  [ -d .gpu/shared ] && mkdir -p ../shared && cp -rn .gpu/shared/. ../shared/
  echo "== tests: ${CHECK:=tests/kernels tests/train/parity_test.ts} (limit ${limit}s, log $log)" >&2
  # shellcheck disable=SC2086 # CHECK is a list of paths
  NO_COLOR=1 timeout "$limit" deno test -A --no-check=remote $CHECK >"$log" 2>&1
  echo "   exit $?: $(grep -E '^(ok|FAILED) \|' "$log")" >&2
  grep -E '\.\.\. FAILED' "$log" >&2
}

group() {
  case $1 in
  check) check ;;
  torch) for m in infer pretrain hadnet; do step 50 "${torch[@]}" --mode "$m" --tf32 off --iters 3 --warmup 1; done ;;
  conv) step 120 "${hadnet[@]}" --mode conv --iters 2 --warmup 1 ;;
  torchconv)
    step 90 bash -c "set -o pipefail; ${hadnet[*]} --mode conv --plan --iters 1 --warmup 0 |
      ${PYTHON:-python3} tools/torch_conv_bench.py --device ${TORCH_DEVICE:-cuda}"
    ;;
  tuned | gather | cl)
    local kernels=${1/cl/channels-last}
    step 60 "${hadnet[@]}" --mode infer --iters 5 --warmup 2 --conv-kernel "$kernels"
    step 90 "${hadnet[@]}" --mode pretrain --iters 3 --warmup 1 --conv-kernel "$kernels"
    step 120 "${hadnet[@]}" --mode hadnet --iters 2 --warmup 1 --conv-kernel "$kernels"
    ;;
  pool)
    for m in pretrain hadnet; do
      step 120 env HADNET_POOL_RESERVE=1.5 "${hadnet[@]}" --mode $m --iters 3 --warmup 1 --conv-kernel tuned
    done
    ;;
  profile)
    for m in infer pretrain hadnet; do step 90 "${hadnet[@]}" --mode $m --iters 1 --warmup 1 --conv-kernel tuned --profile; done
    ;;
  f16)
    step 60 "${hadnet[@]}" --mode infer --iters 5 --warmup 2 --f16 --conv-kernel gather
    step 60 "${hadnet[@]}" --mode infer --iters 5 --warmup 2 --f16 --conv-kernel tuned
    ;;
  tf32) for m in infer pretrain hadnet; do step 40 "${torch[@]}" --mode "$m" --tf32 on --iters 3 --warmup 1; done ;;
  esac
}

groups=(check torch conv torchconv tuned gather cl pool profile f16 tf32)
(($# == 0)) && set -- "${groups[@]}"
for g in "$@"; do
  [[ " ${groups[*]} " == *" $g "* ]] || {
    echo "unknown group: $g (${groups[*]})" >&2
    exit 2
  }
done

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || echo "no nvidia-smi" >&2
for g in "$@"; do group "$g"; done
echo "results: $out ($(wc -l <"$out" 2>/dev/null || echo 0) lines)" >&2
