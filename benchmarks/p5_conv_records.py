"""P5: conv-2 neuron scopes of the paper's convnet on the CIFAR-10 (JPEG) files, recorded as format 2's `ConvRecord`
and as the compact record (`conv_compact`, format 3) by two identical RMSProp runs from the same seed; record size per
recorded round and the hindsight solve, side by side: format 2 (M formed) against the compact record, both by `conv_newton`
(on `DenseProblems` and on `CompactConv`; until the fifteenth session format 2 went by the plain `solvers.newton`).
CPU-sized: one epoch (EPOCH_ROUNDS rounds of BATCH), every EVERY-th round recorded, NEURONS neurons of conv layer 2, hindsight at PREFIXES (recorded rounds). `P5_EVERY` / `P5_NEURONS` resize it."""
import os
import tarfile
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

from ntaylor_nb.data import load_dataset
import ntaylor_nb.hindsight as hs
from ntaylor_nb.hindsight import hindsight
from ntaylor_nb.models import convnet
from ntaylor_nb.regret import RegretRecorder, RegretRecording
from ntaylor_nb.schedules import every

from .common import line

EPOCH_ROUNDS, BATCH = 390, 128  # one epoch of CIFAR-10's 50,000 images
EVERY, NEURONS = (os.environ.get(k, d) for k, d in (('P5_EVERY', '10'), ('P5_NEURONS', '2')))
if not (EVERY.isdigit() and NEURONS.isdigit() and 1 <= int(EVERY) <= EPOCH_ROUNDS and 1 <= int(NEURONS) <= 64):
    raise SystemExit(f'P5_EVERY={EVERY!r}, P5_NEURONS={NEURONS!r}: allowed are whole numbers, 1 to {EPOCH_ROUNDS} rounds between records and 1 to 64 neurons (conv layer 2 has 64)')
EVERY, NEURONS = int(EVERY), int(NEURONS)
RECORDED = -(-EPOCH_ROUNDS // EVERY)
PREFIXES = sorted({max(1, RECORDED // 4), max(1, RECORDED // 2), RECORDED})
ARCHIVE = Path(os.environ.get('NTAYLOR_SHARED', '/work/shared/data')) / 'cifar10' / 'cifar10-jpeg75.tar.gz'


def record(X, Y, path, kind):
    torch.manual_seed(0)
    model = convnet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    scopes = [f'neuron:3:{u}' for u in range(0, 64, 64 // NEURONS)][:NEURONS]  # conv layer 2 is module 3
    g = torch.Generator().manual_seed(1)
    with RegretRecorder(model, 'cross_entropy', scopes, path, X[:BATCH], RECORDED, schedule=every(EVERY), chunk_size=8,
                        conv_record=kind, optimizer=opt) as rec:
        for step in range(EPOCH_ROUNDS):
            i = torch.randint(0, len(X), (BATCH,), generator=g)
            out = model(X[i]); loss = F.cross_entropy(out, Y[i])
            opt.zero_grad(); loss.backward(); rec.maybe(step, X[i], Y[i]); opt.step()
    r = RegretRecording(path)
    return r, sum(c['bytes'] for c in r.manifest['chunks']) / len(r)


@contextmanager
def counting_iterations():
    "Count the Newton iterations (summed over problems) of hindsight's `conv_newton`, on the compact samples and on the formed ones."
    n = [0]
    def wrap(f):
        def g(*a, **k):
            r = f(*a, **k); n[0] += int(r[-1].sum()); return r
        return g
    with mock.patch.object(hs, 'conv_newton', wrap(hs.conv_newton)):
        yield n


def compare(d0, d1, tol=1e-9):
    """Relative differences of the Taylor optima where both solves certify their value (optimum_gap at most tol a round), and over all
    problems (also per round relative to the loss incurred, as P4-CE does: meaningful where optima are near 0)."""
    d1 = d1.loc[d0.index]
    diff = (d1.taylor_optimum - d0.taylor_optimum).abs()
    rel = diff / d0.taylor_optimum.abs()
    both = (d0.optimum_gap <= tol) & (d1.optimum_gap <= tol)
    return dict(both_certified=int(both.sum()), problems=len(d0), max_rel_diff=float(rel[both].max()) if both.any() else None,
                max_rel_diff_all=float(rel.max()), max_diff_per_loss=float((diff / d0.average_loss).max()),
                max_gap_format2=float(d0.optimum_gap.max()), max_gap_compact=float(d1.optimum_gap.max()))


def run():
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(ARCHIVE) as t: t.extractall(tmp, filter='data')
        X, Y = load_dataset('cifar10', tmp)  # the archive holds train/<class>/*.jpg
        res = {}
        for kind in ('conv', 'conv_compact'):
            rec, b = record(X, Y, Path(tmp) / kind, kind)
            assert rec.manifest['layers']['3']['record'] == kind and len(rec) == RECORDED
            with counting_iterations() as its:
                t = time.perf_counter(); df = hindsight(rec, PREFIXES, progress=False); s = time.perf_counter() - t
            res[kind] = (b, s, df.set_index(['scope', 'N']).sort_index(), its[0])
    (b0, s0, d0, i0), (b1, s1, d1, i1) = res['conv'], res['conv_compact']
    return dict(epoch_rounds=EPOCH_ROUNDS, every=EVERY, recorded_rounds=RECORDED, batch=BATCH, neurons=NEURONS, prefixes=PREFIXES,
                bytes_per_round_format2=b0, bytes_per_round_compact=b1, storage_ratio=b0 / b1,
                solve_s_format2=s0, solve_s_compact=s1, speedup=s0 / s1, **compare(d0, d1),
                newton_iterations_format2=i0, newton_iterations_compact=i1, speedup_per_iteration=(s0 / max(i0, 1)) / (s1 / max(i1, 1)),
                optima=d0[['taylor_optimum', 'optimum_gap']].join(d1[['taylor_optimum', 'optimum_gap']], rsuffix='_compact').reset_index().to_dict('records'))


def main():
    r = run()
    return r, line('P5', speedup=r['speedup'], storage_ratio=r['storage_ratio'], max_rel_diff=r['max_rel_diff'],
                   both_certified=f"{r['both_certified']}/{r['problems']}", max_rel_diff_all=r['max_rel_diff_all'], max_diff_per_loss=r['max_diff_per_loss'],
                   solve_s_format2=r['solve_s_format2'], solve_s_compact=r['solve_s_compact'],
                   iterations=f"{r['newton_iterations_format2']}/{r['newton_iterations_compact']}", speedup_per_iteration=r['speedup_per_iteration'])


if __name__ == '__main__': print(main()[1])
