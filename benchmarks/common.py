"""Helpers shared by the benchmarks: timing and the machine description."""
import os
import platform
import time


def best_of(fn, repeat=3):
    "Best wall time of `repeat` calls, and the last result."
    best, out = float('inf'), None
    for _ in range(repeat):
        t = time.perf_counter(); out = fn(); best = min(best, time.perf_counter() - t)
    return best, out


def machine():
    "One line naming the machine the numbers came from."
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): cpu = line.split(':', 1)[1].strip(); break
    except OSError: pass
    gpu = f', GPU {torch.cuda.get_device_name(0)}' if torch.cuda.is_available() else ''
    return f'{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, torch threads {torch.get_num_threads()}{gpu}'


def line(id, **kv):
    "The closing line of a measure: id followed by name=value pairs."
    fmt = lambda v: f'{v:.3g}' if isinstance(v, float) else str(v)
    return ' '.join([id] + [f'{k}={fmt(v)}' for k, v in kv.items()])
