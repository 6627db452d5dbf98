"""P4-CE: the cross-entropy hindsight of a convnet recording, batched damped Newton (the package) against the
L-BFGS solver it replaced (one problem at a time), on the same recording in the same process. CPU-sized: the
paper's convnet on the embedded digits32 data; the scopes of the GPU reproduction (the output layer's layer
scope, 10 neurons of conv layer 1 and of the fully connected layer)."""
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import ntaylor_nb.regret as R
from ntaylor_nb.taylor import Scope
from ntaylor_nb.train import RunConfig, train_run

from .common import line

EPOCHS, PREFIXES = 2, [4, 22]


def _neuron(D, fmt, c, v):
    if fmt == 'linear':
        X, J, a = D[3:]
        return D[0] + J[:, :, c] * (X @ v - a[:, c])[:, None]
    M, m0 = D[3:]
    return D[0] + M[:, :, c] @ v - m0[:, :, c]


def _layer(D, fmt, W):
    if fmt == 'linear':
        X, J, a = D[3:]
        return D[0] + torch.einsum('noc,nc->no', J, X @ W.T - a)
    M, m0 = D[3:]
    return D[0] + torch.einsum('nouk,uk->no', M, W) - m0.sum(2)


def lbfgs_solve(self):
    "The baseline: the solver before this change (L-BFGS per neuron, warm-started), verbatim but for the helpers above."
    D = tuple(torch.cat(z).to(self.device) for z in zip(*self.parts))
    self.parts = [D]
    f0, y, s = D[:3]
    K1 = D[3].shape[1] if self.fmt == 'linear' else D[3].shape[-1]
    L = lambda T: (F.cross_entropy(T, y, reduction='none') * s).sum()
    tol, out = 1e-9 * float(s.sum()), {}
    for u, c in zip(self.units, self.cols):
        v, val, g = R._lbfgs(lambda v: L(_neuron(D, self.fmt, c, v)), self.V.get(u, torch.zeros(K1, dtype=torch.float64)), tol)
        self.V[u] = v
        out[Scope('neuron', self.layer, int(u))] = (val, float(g.norm()), np.nan)
    if self.layer_scope:
        C = D[4].shape[2]
        W, val, g = R._lbfgs(lambda W: L(_layer(D, self.fmt, W)), self.V.get('layer', torch.zeros(C, K1, dtype=torch.float64)), tol)
        self.V['layer'] = W
        out[Scope('layer', self.layer)] = (val, float(g.norm()), np.nan)
    return out


def run():
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig(task='convnet', dataset='digits32', optimizer='adam', lr=1e-3, epochs=EPOCHS, layers=[5], neuron_layers=[1, 4],
                        neurons_per_layer=10, probe_size=0, checkpoint_every=10 ** 9, device='cpu')
        run = train_run(cfg, Path(tmp) / 'run', progress=False)
        rec = R.RegretRecording(Path(run) / 'regret')
        t = time.perf_counter(); ours = R.hindsight(rec, PREFIXES, progress=False); t_ours = time.perf_counter() - t
        print(f'P4-CE: Newton {t_ours:.1f} s; now the L-BFGS baseline (minutes)', flush=True)
        newton = R._DenseAcc.solve
        R._DenseAcc.solve = lbfgs_solve
        try: t = time.perf_counter(); base = R.hindsight(rec, PREFIXES, progress=False); t_base = time.perf_counter() - t
        finally: R._DenseAcc.solve = newton
        rounds, samples = len(rec), int(rec.column('B').sum())
    a, b = ours.set_index(['scope', 'N']), base.set_index(['scope', 'N']).loc[ours.set_index(['scope', 'N']).index]
    conv = (a.optimum_gap <= 1e-9) & (b.grad_norm <= 1e-6)  # both solvers at their tolerances
    diff = (a.taylor_optimum - b.taylor_optimum).abs() / a.average_loss  # per round, relative to the loss incurred
    return dict(rounds=rounds, samples=samples, scopes=int(a.index.get_level_values(0).nunique()), prefixes=len(PREFIXES),
                seconds_newton=t_ours, seconds_lbfgs=t_base, speedup=t_base / t_ours,
                both_converged=int(conv.sum()), problems=len(a), max_diff_converged=float(diff[conv].max()) if conv.any() else None, max_diff_all=float(diff.max()),
                newton_lower_or_equal=int((a.taylor_optimum <= b.taylor_optimum * (1 + 1e-9) + 1e-15).sum()),
                newton_max_gap=float(a.optimum_gap.max()), lbfgs_max_grad_norm=float(b.grad_norm.max()),
                sum_optimum_newton=float(a.taylor_optimum.sum()), sum_optimum_lbfgs=float(b.taylor_optimum.sum()))


def main():
    torch.set_num_threads(torch.get_num_threads())
    r = run()
    return r, line('P4-CE', newton_s=r['seconds_newton'], lbfgs_s=r['seconds_lbfgs'], speedup=r['speedup'], both_converged=f"{r['both_converged']}/{r['problems']}",
                   max_diff_converged=r['max_diff_converged'], newton_lower_or_equal=f"{r['newton_lower_or_equal']}/{r['problems']}")


if __name__ == '__main__': print(main()[1])
