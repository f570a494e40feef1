#!/usr/bin/env python3
"""PyTorch's time for each convolution pass that `hadnet bench --mode conv` times, for side-by-side ratios.

Reads hadnet's conv lines (JSON, one per pass and kernel, e.g. from `--plan`) on stdin and prints one line per
(convolution, pass) in the same form, with impl "pytorch": forward (F.conv3d), input gradient and weight gradient
(torch.nn.grad, which run cuDNN's backward kernels as autograd does). Settings as torch_reference.py bench: fp32 with
TF32 off unless --tf32 on, cudnn.benchmark left off. As hadnet's conv mode, each timed sample runs enough calls to
span about 20 ms (at most 16) before its synchronize, and the median of five samples is reported per call.

  deno task -q bench --mode conv --plan --iters 1 --warmup 0 | python3 tools/torch_conv_bench.py --device cuda
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--tf32', choices=['on', 'off'], default='off')
    a = ap.parse_args()
    dev = torch.device(a.device)
    if dev.type == 'cuda':
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = (a.tf32 == 'on')
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    name = torch.cuda.get_device_name(0) if dev.type == 'cuda' else f'cpu x{torch.get_num_threads()}'
    seen = set()
    for line in sys.stdin:
        if not line.startswith('{'):
            continue
        r = json.loads(line)
        if 'conv' not in r or 'pass' not in r or (r['conv'], r['pass']) in seen:
            continue
        seen.add((r['conv'], r['pass']))
        s = r['shape']
        k, stride, pad = s['kernel'], s['stride'], s['pad']
        x = torch.rand(1, s['cin'], *s['input'], device=dev)
        w = torch.rand(s['cout'], s['cin'], k, k, k, device=dev)
        b = torch.zeros(s['cout'], device=dev)
        dy = F.conv3d(x, w, b, stride, pad)
        flop = 2 * s['cout'] * s['cin'] * k ** 3 * dy[0, 0].numel()
        run = {
            'forward': lambda: F.conv3d(x, w, b, stride, pad),
            'input_grad': lambda: torch.nn.grad.conv3d_input(x.shape, w, dy, stride, pad),
            'weight_grad': lambda: torch.nn.grad.conv3d_weight(x, w.shape, dy, stride, pad),
        }[r['pass']]

        def sample(calls):
            sync()
            t = time.perf_counter()
            for _ in range(calls):
                run()
            sync()
            return (time.perf_counter() - t) * 1000 / calls

        sample(1)
        reps = min(16, max(1, math.ceil(20 / sample(1))))
        ms = [sample(reps) for _ in range(5)]
        med = statistics.median(ms)
        print(json.dumps({'impl': 'pytorch', 'torch': torch.__version__, 'device': name, 'mode': 'conv',
                          'size': r['size'], 'k': r['k'], 'tf32': a.tf32, 'conv': r['conv'], 'shape': s,
                          'pass': r['pass'], 'ms_median': med, 'ms_all': ms, 'tflops': flop / (med * 1e-3) / 1e12,
                          'reps': reps}), flush=True)
        del x, w, b, dy


if __name__ == '__main__':
    main()
