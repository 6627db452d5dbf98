"""Not a measure of `make bench`: the investigation behind P5's capped conv-2 neuron (benchmarks/RESULTS.md, P5, eighteenth and
nineteenth sessions), made repeatable.

    python -m benchmarks.p5_neuron [RECORDING] [--prefix 19] [--caps 100,400] [--neuron 0] [--iterations 525] [--seconds 1800]

RECORDING: P5's compact recording (`conv_compact`, conv-2 neurons 0 and 32); without it one is made here as P5 makes it
(one epoch of CIFAR-10, a few minutes on 2 cores), in a temporary folder. Three experiments on one neuron at one prefix:

1. `hindsight` alone at that prefix (from 0) with its Newton capped at each of `--caps` iterations: the Taylor optimum a
   round, `optimum_gap` (half the decrement: an estimate), whether it is certified, and |v|. Where the value still falls
   between two caps by more than the first cap's gap, that gap understated the distance to the infimum.
2. The bracket of `ntaylor_nb.separable` (twenty-third session) on the neuron's samples formed here: the infimum's lower and
   upper ends, summed.
3. A continuation on a ridge, independent of the package's solver: minimise f(v) + mu |v|^2 / 2 for mu = 10, 1, ..., each
   stage from the last one's point, by damped Newton with Cholesky factors (at most 30 iterations a stage), on the neuron's
   samples formed in float64 (M_b = J_b X_b) from the recording. f is the summed Taylor loss; it prints each stage's f, f a
   round and |v|, until `--iterations` Newton iterations in all, `--seconds`, or a failed factor. A converged stage bounds nothing, but its value is a point that
   exists: where it lies below the package's value, the package did not reach the infimum.
Reads two internals of `CompactConv` (`_segments`, `_rows`) to form the samples.
"""
import argparse
import tarfile
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

import ntaylor_nb.hindsight as hs
from ntaylor_nb.hindsight import GAP_TOL
from ntaylor_nb.data import load_dataset
from ntaylor_nb.regret import RegretRecording
from ntaylor_nb.separable import bracket

from .p5_conv_records import ARCHIVE, record


def capped_solve(rec, N, scope, cap):
    "hindsight at prefix N alone, its Newton capped at `cap` and not bracketed; the row, |v| and the neuron's samples as the solver saw them."
    orig, seen = hs.conv_newton, {}
    def capped(prob, idx, V0, tol, **k):
        out = orig(prob, idx, V0, tol, **dict(k, max_iter=cap))
        seen.update(V=out[0][0].clone(), its=int(out[-1][0]), segs=[dict({key: nb[key] for key in ('rs', 'j', 'base', 'y', 's', 'const')}, X=prob._rows(nb)) for nb in prob._segments(0)])
        return out
    with mock.patch.object(hs, 'conv_newton', capped), mock.patch.object(hs, 'sharpen', lambda prob, idx, f, gap, tol: (f, gap)):  # (the Newton's own values: no bracket)
        row = hs.hindsight(rec, [N], scopes=[scope], progress=False).iloc[0]
    return row, seen


class Formed:
    "The neuron's summed Taylor loss from its samples formed in float64: values, gradients and Hessians (sum_b s_b M_b' H_b M_b)."
    def __init__(self, segs):
        self.parts, self.const = [], 0.0
        for sg in segs:
            rs, j, X, base = sg['rs'], sg['j'].double(), sg['X'].double(), sg['base'].double()
            M = torch.zeros(base.shape[0], j.shape[1], X.shape[1], dtype=torch.float64)
            M.index_add_(0, rs, j[:, :, None] * X[:, None, :])  # M_b = sum of the rows r of sample b: j_r x_r'
            self.parts.append((M, base, sg['y'], sg['s'].double())); self.const += float(sg['const'])
        self.P = self.parts[0][0].shape[2]

    def value(self, v):
        return self.const + sum(float((s * (torch.logsumexp(z, 1) - z.gather(1, y[:, None])[:, 0])).sum()) for M, base, y, s in self.parts for z in [base + M @ v])

    def fgH(self, v):
        f, g, H = self.const, torch.zeros(self.P, dtype=torch.float64), torch.zeros(self.P, self.P, dtype=torch.float64)
        for M, base, y, s in self.parts:
            z = base + M @ v; p = torch.softmax(z, 1)
            f += float((s * (torch.logsumexp(z, 1) - z.gather(1, y[:, None])[:, 0])).sum())
            r = p.clone(); r[torch.arange(len(y)), y] -= 1
            g += torch.einsum('b,bk,bkp->p', s, r, M)
            sp = p.sqrt()  # diag(p) - p p' = A' A with A = (diag(sqrt p) - sqrt(p) p') 
            A = (sp[:, :, None] * M - sp[:, :, None] * (p[:, None, :] @ M)) * s.sqrt()[:, None, None]
            A = A.reshape(-1, self.P); H += A.T @ A
        return f, g, H


def continuation(prob, N, iterations, seconds, max_stage=30):
    v, total, t0 = torch.zeros(prob.P, dtype=torch.float64), 0, time.perf_counter()
    for k in range(40):
        mu = 10.0 ** (1 - k)
        converged = False
        for _ in range(min(max_stage, iterations - total)):
            f, g, H = prob.fgH(v)
            fr, gr = f + 0.5 * mu * float(v @ v), g + mu * v
            L, info = torch.linalg.cholesky_ex(H + mu * torch.eye(prob.P, dtype=torch.float64))
            if info: print(f'  mu {mu:.0e}: the factor failed; stopped'); return
            d = -torch.cholesky_solve(gr[:, None], L)[:, 0]; dec = float(-(gr @ d)); total += 1
            if dec / 2 < 1e-10: converged = True; break
            t = 1.0
            while t > 2 ** -30:
                vn = v + t * d
                if prob.value(vn) + 0.5 * mu * float(vn @ vn) <= fr - 0.25 * t * dec: break
                t /= 2
            v = vn
        f = prob.value(v)
        print(f'  mu {mu:.0e}: f {f:.7f} ({f / N:.7f} a round), |v| {float(v.norm()):.2e}, {total} iterations'
              f'{"" if converged else " (the stage did not converge)"}, {time.perf_counter() - t0:.0f} s', flush=True)
        if total >= iterations: print(f'  stopped after {total} iterations'); return
        if time.perf_counter() - t0 > seconds: print(f'  stopped after {seconds:g} s'); return


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('recording', nargs='?', help="P5's compact recording (default: make one)")
    ap.add_argument('--prefix', type=int, default=19, help='the prefix N, in recorded rounds')
    ap.add_argument('--caps', default='100,400', help='Newton iteration caps of the package solve, comma separated')
    ap.add_argument('--neuron', type=int, default=0, help='the conv-2 neuron (recorded: 0 and 32)')
    ap.add_argument('--iterations', type=int, default=525, help="the continuation's Newton iterations in all (the nineteenth session's run: 525)")
    ap.add_argument('--seconds', type=float, default=1800, help="the continuation's time budget")
    a = ap.parse_args(argv)
    caps = [int(c) for c in a.caps.split(',') if c.strip().isdigit()]
    if not caps or len(caps) != len(a.caps.split(',')) or min(caps) < 1: ap.error(f'--caps={a.caps!r}: positive whole numbers, comma separated')
    if a.iterations < 1 or a.seconds <= 0: ap.error('--iterations and --seconds must be positive')
    with tempfile.TemporaryDirectory() as tmp:
        if a.recording: rec = RegretRecording(a.recording)
        else:
            with tarfile.open(ARCHIVE) as t: t.extractall(tmp, filter='data')
            X, Y = load_dataset('cifar10', tmp)
            print('recording P5 (compact) ...', flush=True); rec, _ = record(X, Y, Path(tmp) / 'conv_compact', 'conv_compact')
        if not 1 <= a.prefix <= len(rec): ap.error(f'--prefix={a.prefix}: the recording holds rounds 1..{len(rec)}')
        scope = f'neuron:3:{a.neuron}'
        if scope not in {str(s) for s in rec.scopes}: ap.error(f'{scope} was not recorded; recorded: {[str(s) for s in rec.scopes]}')
        print(f'{scope} at prefix {a.prefix}: the package solve alone from 0, capped')
        for cap in caps:
            t = time.perf_counter(); row, seen = capped_solve(rec, a.prefix, scope, cap)
            print(f'  cap {cap}: {seen["its"]} iterations, value {row.taylor_optimum:.7f} a round, optimum_gap {row.optimum_gap:.2g} a round,'
                  f' certified {bool(row.certified)}, |v| {float(seen["V"].norm()):.2e}, {time.perf_counter() - t:.0f} s', flush=True)
        prob = Formed(seen['segs'])
        t = time.perf_counter()
        b = bracket(*(torch.cat([pt[i] for pt in prob.parts]) for i in range(4)), prob.const, tol=GAP_TOL * a.prefix)
        print('  bracket (ntaylor_nb.separable): none' if b is None else
              f'  bracket (ntaylor_nb.separable): [{b.lower:.10f}, {b.upper:.10f}] summed, width {b.upper - b.lower:.2g} (stop rule {GAP_TOL * a.prefix:.2g}),'
              f' {b.separated} pairs separated, LP ({b.lp}) {b.lp_iterations} iterations (converged {b.lp_converged}), {time.perf_counter() - t:.1f} s', flush=True)
        print(f'continuation on a ridge ({sum(len(p[1]) for p in prob.parts)} samples, {prob.P} weights; formed f at the last capped point'
              f' {prob.value(seen["V"]) / a.prefix:.7f} a round)')
        continuation(prob, a.prefix, a.iterations, a.seconds)


if __name__ == '__main__': main()
