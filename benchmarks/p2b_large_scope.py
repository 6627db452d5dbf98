"""P2b: the matrix-free hindsight of a large layer scope. The paper's MNIST autoencoder (784-50-30-20-30-50-784, batch
64, Adam, real MNIST from ../shared/data copied to a temporary root) records only layer 1's layer scope (50 x 785 =
39,250 variables, above MAX_DIRECT: solved matrix-free, through the rows' Gram matrix while samples x rank are at most
`_DUAL_ROWS`, then by K-FAC-preconditioned CG on the kept rank factors), and `hindsight` runs at 64 log-spaced prefixes:
its time. Agreement: the same autoencoder on a 10 x 10 centre crop of MNIST (layer 1: 50 x 101 = 5,050 variables, where
the direct solve fits), solved both ways (`solver="newton"`, the direct solve, and `solver="newton-cg"`, the matrix-free
one) on the same recording.

The kept factors take 4 (K + 1) + 8 (C + 1) k bytes a sample (x_b in float32, exact; L_b and r_b in float64; k the rank
of S_b, at most 20, about 10 here): about 7 KB, 4.5 GB at the issue's 10,000 rounds. P2B_ROUNDS (default 10,000) and
P2B_CHECK_ROUNDS (default 300) size the two parts; `peak_rss_gb` is the process's peak resident memory. P2B_DEVICE
(default cpu) is where the matrix-free solves run: on a GPU (`cuda`) the layer scope's Hessian is also accumulated there
and solved exactly past the rows' Gram matrix (`ntaylor_nb.hindsight._DEVICE_DENSE`); P2B_PROGRESS=1 shows the prefixes
as they are solved."""
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ntaylor_nb.data import load_dataset
from ntaylor_nb.devices import resolve_device
from ntaylor_nb.growth import log_prefixes
from ntaylor_nb.hindsight import hindsight
from ntaylor_nb.models import autoencoder
from ntaylor_nb.regret import RegretRecorder

from .common import line

DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'mnist'
B, LR = 64, 1e-3


def mnist(tmp):
    "MNIST training images (60000, 784) in [0, 1], read through torchvision from a copy of the shared files (or of $P2B_MNIST: a data root holding MNIST/raw)."
    src = Path(os.environ['P2B_MNIST']) if os.environ.get('P2B_MNIST') else DATA if DATA.exists() else Path('/work/shared/data/mnist')
    raw, gz = tmp / 'mnist' / 'MNIST' / 'raw', sorted((src / 'MNIST' / 'raw').glob('*.gz'))
    if not gz: raise FileNotFoundError(f'{src}: no MNIST/raw/*.gz there (P2B_MNIST, if set, must be a data root holding the official MNIST files)')
    raw.mkdir(parents=True)
    for f in gz: shutil.copy(f, raw)  # the official files only (another process may be extracting beside them)
    x, _ = load_dataset('mnist', tmp / 'mnist')
    return x.reshape(len(x), -1)


def record(X, rounds, path, seed=0):
    "Train the autoencoder on X for `rounds` minibatches, recording layer 1's layer scope."
    torch.manual_seed(seed)
    net = autoencoder(X.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    g = torch.Generator().manual_seed(seed)
    with RegretRecorder(net, 'mse', ['layer:1'], path, X[:B], rounds, optimizer=opt, chunk_size=256) as rec:
        for step in range(rounds):
            x = X[torch.randint(0, len(X), (B,), generator=g)]
            loss = F.mse_loss(net(x), x)
            opt.zero_grad(); loss.backward(); rec.record(step, x, x); opt.step()
    return path


def run(rounds=None, check_rounds=None):
    rounds = rounds or int(os.environ.get('P2B_ROUNDS', 10000))
    check_rounds = check_rounds or int(os.environ.get('P2B_CHECK_ROUNDS', 300))
    dev, bar = str(resolve_device(os.environ.get('P2B_DEVICE', 'cpu'))), os.environ.get('P2B_PROGRESS') == '1'  # a bad device: refused before any work
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        X = mnist(tmp)
        t = time.perf_counter(); rec = record(X, rounds, tmp / 'big'); t_rec = time.perf_counter() - t
        print(f'P2b recorded {rounds} rounds in {t_rec:.1f} s', flush=True)  # kept if a limit stops what follows
        pre = log_prefixes(rounds, 64)
        t = time.perf_counter(); big = hindsight(rec, pre, progress=bar, device=dev); t_big = time.perf_counter() - t
        print(f'P2b large scope done (the check follows): seconds={t_big:.1f} device={dev} '
              f'certified={int(big.certified.sum())}/{len(big)} max_gap={big.optimum_gap.max():.3g}', flush=True)  # kept if the check is stopped
        Xs = X.reshape(-1, 28, 28)[:, 9:19, 9:19].reshape(len(X), -1).contiguous()  # 10 x 10 centre crop: 5,050 variables
        small = record(Xs, check_rounds, tmp / 'small')
        cpre = log_prefixes(check_rounds, 64)
        dense = hindsight(small, cpre, progress=False, solver='newton')
        t = time.perf_counter(); free = hindsight(small, cpre, progress=bar, solver='newton-cg', device=dev); t_free = time.perf_counter() - t
    rel = np.abs(free.taylor_optimum.values - dense.taylor_optimum.values) / np.abs(dense.taylor_optimum.values)
    late = free.N.values * B >= 5050  # prefixes with at least as many samples as variables
    return dict(rounds=rounds, prefixes=len(pre), variables=50 * 785, seconds=t_big, seconds_record=t_rec, device=dev,
                certified=f'{int(big.certified.sum())}/{len(big)}',
                max_gap=float(big.optimum_gap.max()), final_optimum=float(big.taylor_optimum.iloc[-1]),
                check_rounds=check_rounds, check_variables=50 * 101, check_prefixes=len(cpre), check_seconds_cg=t_free,
                max_rel_diff=float(rel.max()), max_rel_diff_late=float(rel[late].max()) if late.any() else None,
                peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)


def main():
    r = run()
    return r, line('P2b', seconds=r['seconds'], rounds=r['rounds'], prefixes=r['prefixes'], device=r['device'], certified=r['certified'], max_gap=r['max_gap'],
                   max_rel_diff=r['max_rel_diff'], max_rel_diff_late=r['max_rel_diff_late'],
                   check_rounds=r['check_rounds'], peak_rss_gb=r['peak_rss_gb'])


if __name__ == '__main__': print(main()[1])
