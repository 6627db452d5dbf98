"""P4-CE: the cross-entropy hindsight of a convnet recording, batched damped Newton (the package) against the
L-BFGS solver it replaced (one problem at a time; `hindsight(..., solver='lbfgs')`), on the same recording in the same process. CPU-sized: the
paper's convnet on the embedded digits32 data; the scopes of the GPU reproduction (the output layer's layer
scope, 10 neurons of conv layer 1 and of the fully connected layer)."""
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ntaylor_nb.hindsight import hindsight
from ntaylor_nb.regret import RegretRecording
from ntaylor_nb.train import RunConfig, train_run

from .common import line

EPOCHS, PREFIXES = 2, [4, 22]


def run():
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig(task='convnet', dataset='digits32', optimizer='adam', lr=1e-3, epochs=EPOCHS, layers=[5], neuron_layers=[1, 4],
                        neurons_per_layer=10, probe_size=0, checkpoint_every=10 ** 9, device='cpu')
        run = train_run(cfg, Path(tmp) / 'run', progress=False)
        rec = RegretRecording(Path(run) / 'regret')
        t = time.perf_counter(); ours = hindsight(rec, PREFIXES, progress=False); t_ours = time.perf_counter() - t
        print(f'P4-CE: Newton {t_ours:.1f} s; now the L-BFGS baseline (minutes)', flush=True)
        t = time.perf_counter(); base = hindsight(rec, PREFIXES, progress=False, solver='lbfgs'); t_base = time.perf_counter() - t
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
