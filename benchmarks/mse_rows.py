"""Not a measure of `make bench`: the mean-squared-error layer scopes' direct solves against their minima solved from the rows
(benchmarks/RESULTS.md, "MSE direct solves against the rows", twenty-first session).

    python -m benchmarks.mse_rows RECORDING [--prefixes 16]

RECORDING: the regret recording of an autoencoder run (a run folder's `regret/`). `hindsight` solves each layer scope of a
Gauss-Newton chain from its quadratic statistics Q = sum J'J (`ntaylor_nb.quadratic.quad_min`), which square the rows'
conditioning (since the twenty-second session, from its own QR factor of the rows where Q does not resolve every direction,
within a budget: `ntaylor_nb.quadratic.LsqRows`; this script, written before, checks both with its own TSQR and SVD, sharing the
rank factors of S_b with them, below). Here the same scopes are solved again from their rows: `hindsight` with solver="newton-cg" keeps every
sample's rank factors (x_b, L_b, r_b: the rows L_b' V x_b with right-hand sides r_b, `_keep`), and instead of its
matrix-free solve each prefix's rows are reduced by a QR factorisation block by block (TSQR) and the least-squares
minimum taken from an SVD of the reduced factor, cut at 1e-13 of its largest singular value: the rows' conditioning, not its
square. Prints, per layer scope and prefix, both Taylor optima a round, their difference and the direct solve's
`optimum_gap` and `certified`.

Shares with the package the recording, the replay of the Gauss-Newton factors and the rank factors of S_b (`_rank_factor`);
not the quadratic statistics or their solve. Output layers (S_b = I, solved as one shared matrix) and neuron scopes keep no
rows there and are not compared. The rows of every prefix are kept in memory: about (K + 1) C k doubles a sample (C units,
K inputs, k the rank of S_b), so it suits recordings of hundreds of rounds.
"""
import argparse
import time
from unittest import mock

import numpy as np
import pandas as pd

import ntaylor_nb.hindsight as hs
from ntaylor_nb.growth import log_prefixes
from ntaylor_nb.hindsight_lsq import _blocks
from ntaylor_nb.regret import RegretRecording


class RowsMin:
    "The least-squares minimum min_V sum_b |L_b' V x_b - r_b|^2 over kept blocks (x (n, K1), L (n, C, k), r (n, k)), added to incrementally."
    def __init__(self, block: int = 256):
        self.R = self.d = None; self.e, self.rr, self.block = 0.0, 0.0, block

    def add(self, X, L, r):
        "Reduce the rows of samples X, L, r (numpy, float64) into the triangular factor R and its right-hand side d (TSQR)."
        P = L.shape[1] * X.shape[1]
        if self.R is None: self.R, self.d = np.zeros((0, P)), np.zeros(0)
        for i in range(0, len(X), self.block):
            A = np.einsum('bcj,bi->bjci', L[i:i + self.block], X[i:i + self.block]).reshape(-1, P)  # row (b, j): L_b[:, j] (x) x_b
            y = r[i:i + self.block].reshape(-1)
            Qm, self.R = np.linalg.qr(np.vstack([self.R, A]))
            rhs = np.concatenate([self.d, y]); self.d = Qm.T @ rhs
            res = rhs - Qm @ self.d; self.e += float(res @ res)  # the part of the right-hand sides no row combination reaches
            self.rr += float(y @ y)

    def minimum(self, cut: float = 1e-13) -> float:
        "min_V |A V - r|^2 so far: the residual the reduction left, plus the SVD of R's (singular values above `cut` of the largest)."
        if self.R is None or not len(self.R): return 0.0
        U, s, _ = np.linalg.svd(self.R)
        k = s > cut * s[0]
        res = self.d - U[:, k] @ (U[:, k].T @ self.d)
        return self.e + float(res @ res)


def compare(rec: RegretRecording, prefixes: list) -> pd.DataFrame:
    "Per Gauss-Newton layer scope and prefix: the direct solve's Taylor optimum, the rows' one (a round), and the direct solve's gap."
    direct = hs.hindsight(rec, prefixes, progress=False)
    rows, added, layers = {}, {}, set()
    def solve_rows(self, tol):  # replaces _solve_free: the minimum from the kept rows, c - |r|^2 + min |A V - r|^2
        m = rows.setdefault(id(self), RowsMin()); layers.add(str(self.layer))
        if new := self.kept[added.get(id(self), 0):]:  # the pieces kept since the last prefix, as one block (ranks zero-padded)
            m.add(*(t.double().numpy() for t in _blocks(new, size=2 ** 62)[0]))
            added[id(self)] = len(self.kept)
        return float(self.st['c']) - m.rr + m.minimum(), np.nan, 0.0
    with mock.patch.object(hs._GNAcc, '_solve_free', solve_rows):
        from_rows = hs.hindsight(rec, prefixes, progress=False, solver='newton-cg')
    key = ['scope', 'N']
    d, f = (t[t.kind == 'layer'].set_index(key) for t in (direct, from_rows))
    f = f[f.layer.astype(str).isin(layers)]  # (the output layer of a chain keeps no rows: solved directly both times, left out)
    out = d[['taylor_optimum', 'optimum_gap', 'certified', 'average_loss']].join(f[['taylor_optimum']].rename(columns={'taylor_optimum': 'from_rows'}), how='inner')
    out['difference'] = out.taylor_optimum - out.from_rows
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('recording'); ap.add_argument('--prefixes', type=int, default=16)
    a = ap.parse_args(argv)
    rec = RegretRecording(a.recording)
    t = time.time()
    out = compare(rec, log_prefixes(len(rec), a.prefixes))
    pd.set_option('display.width', 200)
    print(out.to_string(float_format=lambda x: f'{x:.10g}'))
    print(f'{len(out)} layer-scope solves, {time.time() - t:.0f} s; largest |difference| a round {out.difference.abs().max():.3g} '
          f'(relative to the average loss {(out.difference.abs() / out.average_loss).max():.3g}); uncertified: {int((~out.certified).sum())}')


if __name__ == '__main__': main()
