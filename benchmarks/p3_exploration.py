"""P3: the three exploration measures at N = 100, D = 10,000, M = 180, against a plain dense float implementation."""
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ntaylor_nb.exploration import ExplorationRecorder, ExplorationRecording, exploration_measures

from .common import best_of, line

N, D, M = 100, 10_000, 180


class Replay(nn.Module):
    "A stand-in network whose single ReLU sees prescribed pre-activations: snapshot n of a synthetic run."
    def __init__(self, A):
        super().__init__(); self.A, self.n, self.relu = A, 0, nn.ReLU()
    def forward(self, x): return self.relu(torch.from_numpy(np.where(self.A[self.n], 1.0, -1.0)).float())


def synthetic(seed=0):
    "A training-like tensor: each unit has a per-datapoint base pattern; a few percent of entries flip each snapshot."
    rng = np.random.default_rng(seed)
    A = np.empty((N, D, M), bool)
    A[0] = rng.random((D, M)) < 0.5
    rate = np.linspace(0.001, 0.05, M)  # units explore at different rates
    for n in range(1, N): A[n] = A[n - 1] ^ (rng.random((D, M)) < rate)
    return A


def dense_baseline(A):
    "The measures written directly on a float array: pairwise distances, differences, an SVD per unit."
    F = A.astype(np.float64)
    nov = [np.nan] + [min(((F[n] - F[k]) ** 2).sum() for k in range(n)) for n in range(1, N)]
    sw = np.sort(((F[1:] - F[:-1]) ** 2).sum((0, 2)) / ((N - 1) * M))[::-1]
    lv = []
    for m in range(M):
        X = F[:, :, m] - F[:, :, m].mean(0)
        s = np.linalg.svd(X, compute_uv=False)[:50]
        lv.append(np.log(np.maximum(np.pad(s, (0, 50 - len(s))), 1e-3)).sum())
    return np.array(nov), sw, np.sort(lv)[::-1]


def run():
    A = synthetic()
    with tempfile.TemporaryDirectory() as tmp:
        model = Replay(A)
        with ExplorationRecorder(model, torch.zeros(D, 1), Path(tmp) / 'rec', chunk_size=25) as rec:
            for n in range(N): model.n = n; rec.record(n)
        R = ExplorationRecording(Path(tmp) / 'rec')
        data_bytes = sum((Path(tmp) / 'rec' / c['file']).stat().st_size for c in R.manifest['chunks'])
        manifest_bytes = (Path(tmp) / 'rec' / 'manifest.json').stat().st_size

        def ours():
            R2 = ExplorationRecording(Path(tmp) / 'rec')  # from disk, every time
            ms = exploration_measures(R2)
            return ms["novelty"], np.sort(ms["switches"])[::-1], np.sort(ms["log_volume"])[::-1]
        t_ours, (nov, sw, lv) = best_of(ours, 3)
    t0 = time.perf_counter(); bn, bs, bl = dense_baseline(A); t_base = time.perf_counter() - t0
    np.testing.assert_array_equal(nov, bn); np.testing.assert_allclose(sw, bs, atol=1e-15); np.testing.assert_allclose(lv, bl, rtol=1e-8, atol=1e-6)
    target_bytes = N * D * M // 8
    return dict(seconds=t_ours, target_seconds=5, bytes=data_bytes, target_bytes=target_bytes, manifest_bytes=manifest_bytes,
                baseline_seconds=t_base, speedup_vs_dense=t_base / t_ours, target_speedup=20)


def main():
    r = run()
    print(f'P3 details: ours {r["seconds"]:.2f} s, dense float baseline {r["baseline_seconds"]:.1f} s, '
          f'data {r["bytes"]} bytes + manifest {r["manifest_bytes"]} bytes')
    return r, line('P3', seconds=r['seconds'], target_seconds=5, bytes=r['bytes'], target_bytes=r['target_bytes'],
                   speedup_vs_dense=r['speedup_vs_dense'], target_speedup=20)
