"""P5: conv-2 neuron scopes of the paper's convnet on the CIFAR-10 (JPEG) files, recorded as format 2's `ConvRecord`
and as the compact record (`conv_compact`, format 3) by two identical RMSProp runs from the same seed; record size per
round and the hindsight solve, side by side. CPU-sized: ROUNDS rounds of BATCH, NEURONS neurons of conv layer 2,
PREFIXES (one epoch of 390 rounds does not fit a 2-core CPU)."""
import os
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ntaylor_nb.data import load_dataset
from ntaylor_nb.hindsight import hindsight
from ntaylor_nb.models import convnet
from ntaylor_nb.regret import RegretRecorder, RegretRecording

from .common import line

ROUNDS, BATCH, NEURONS, PREFIXES = 4, 32, 2, [2, 4]
ARCHIVE = Path(os.environ.get('NTAYLOR_SHARED', '/work/shared/data')) / 'cifar10' / 'cifar10-jpeg75.tar.gz'


def record(X, Y, path, kind):
    torch.manual_seed(0)
    model = convnet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    scopes = [f'neuron:3:{u}' for u in range(0, 64, 64 // NEURONS)][:NEURONS]  # conv layer 2 is module 3
    g = torch.Generator().manual_seed(1)
    with RegretRecorder(model, 'cross_entropy', scopes, path, X[:BATCH], ROUNDS, chunk_size=ROUNDS, conv_record=kind) as rec:
        for step in range(ROUNDS):
            i = torch.randint(0, len(X), (BATCH,), generator=g)
            out = model(X[i]); loss = F.cross_entropy(out, Y[i])
            opt.zero_grad(); loss.backward(); rec.maybe(step, X[i], Y[i]); opt.step()
    r = RegretRecording(path)
    return r, sum(c['bytes'] for c in r.manifest['chunks']) / len(r)


def run():
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(ARCHIVE) as t: t.extractall(tmp, filter='data')
        X, Y = load_dataset('cifar10', tmp)  # the archive holds train/<class>/*.jpg
        res = {}
        for kind in ('conv', 'conv_compact'):
            rec, b = record(X, Y, Path(tmp) / kind, kind)
            assert rec.manifest['layers']['3']['record'] == kind
            t = time.perf_counter(); df = hindsight(rec, PREFIXES, progress=False); s = time.perf_counter() - t
            res[kind] = (b, s, df.set_index(['scope', 'N']).sort_index())
    (b0, s0, d0), (b1, s1, d1) = res['conv'], res['conv_compact']
    rel = float(((d1.taylor_optimum - d0.taylor_optimum).abs() / d0.taylor_optimum.abs()).max())
    # at this size (128 samples, 1,601 variables) the problems are separable: the optima are near 0, approached only at
    # infinity, so the difference is also given per round relative to the loss incurred (as P4-CE does)
    per_loss = float(((d1.taylor_optimum - d0.taylor_optimum).abs() / d0.average_loss).max())
    return dict(rounds=ROUNDS, batch=BATCH, neurons=NEURONS, prefixes=PREFIXES, bytes_per_round_format2=b0, bytes_per_round_compact=b1,
                storage_ratio=b0 / b1, solve_s_format2=s0, solve_s_compact=s1, speedup=s0 / s1, max_rel_diff=rel, max_diff_per_loss=per_loss)


def main():
    r = run()
    return r, line('P5', speedup=r['speedup'], storage_ratio=r['storage_ratio'], max_rel_diff=r['max_rel_diff'], max_diff_per_loss=r['max_diff_per_loss'],
                   solve_s_format2=r['solve_s_format2'], solve_s_compact=r['solve_s_compact'])


if __name__ == '__main__': print(main()[1])
