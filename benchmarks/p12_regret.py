"""P1 (recording overhead) and P2 (hindsight speed) on the MNIST-shaped autoencoder 784-50-30-20-30-50-784, MSE, batch 64.

Layers are numbered 1..6 from the input (module paths 0, 2, 4, 6, 8, 10); P1 and P2 record the layer scope of layer 3
(30 -> 20) and every neuron of layers 2-5 (130 neurons): 131 scopes. Random data of MNIST's shape is used for timing.
"""
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, jacrev, vmap

from ntaylor_nb.hindsight import hindsight
from ntaylor_nb.hindsight_generic import hindsight_generic
from ntaylor_nb.regret import RegretRecorder, RegretRecording

from .common import line

LAYERS = {1: '0', 2: '2', 3: '4', 4: '6', 5: '8', 6: '10'}
SCOPES = ['layer:4'] + [f'neuron:{LAYERS[l]}:{u}' for l, n in [(2, 30), (3, 20), (4, 30), (5, 50)] for u in range(n)]


def make(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 30), nn.ReLU(), nn.Linear(30, 20), nn.ReLU(),
                         nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 50), nn.ReLU(), nn.Linear(50, 784))


DATA = torch.rand(12_800, 784, generator=torch.Generator().manual_seed(0))


def batch(i): return DATA[(i * 64) % len(DATA):(i * 64) % len(DATA) + 64]


def train(rounds, recorder=None, seed=0):
    "Adam training for `rounds` minibatches; `recorder(model)` makes a recorder (None: plain). Returns wall seconds."
    model = make(seed); opt = torch.optim.Adam(model.parameters(), 1e-3)
    rec = recorder(model) if recorder else None
    if rec: rec.__enter__()
    t = time.perf_counter()
    for i in range(rounds):
        x = batch(i)
        loss = F.mse_loss(model(x), x)
        opt.zero_grad(); loss.backward()
        if rec: rec.record(i, x, x)
        opt.step()
    if rec: rec.__exit__(None, None, None)
    return time.perf_counter() - t


def jacrev_factors(model, x):
    "The same recording by per-sample torch.func.jacrev: J_b of the output w.r.t. each recorded layer's pre-activations."
    params = {k: p.detach() for k, p in model.named_parameters()}
    out = {}
    for name in [LAYERS[l] for l in (2, 3, 4, 5)]:
        mod = dict(model.named_modules())[name]
        def f(z, xb):
            h = mod.register_forward_hook(lambda m, i, o: o + z)
            try: return functional_call(model, params, (xb[None],))[0]
            finally: h.remove()
        with torch.no_grad(): a = mod(torch.zeros(1, mod.in_features))  # shape only
        J = vmap(jacrev(f), in_dims=(None, 0))(torch.zeros(a.shape[1]), x)  # (B, 784, C)
        e = functional_call(model, params, (x,)) - x
        S = J.transpose(1, 2) @ J
        out[name] = (S if name == '4' else S.diagonal(0, 1, 2), torch.einsum('boc,bo->bc', J, e))
    return out


def p1(rounds=600, reps=3):
    tmp = Path(tempfile.mkdtemp())
    plain, rec, k = [], [], 0
    for _ in range(reps):  # interleaved, so that drifts of the machine hit both alike
        plain.append(train(rounds))
        rec.append(train(rounds, lambda m: RegretRecorder(m, 'mse', SCOPES, tmp / f'r{k}', DATA[:64], rounds)))
        k += 1
    t_plain, t_rec = np.median(plain), np.median(rec)
    stored = RegretRecording(tmp / 'r0')
    per_round_bytes = sum(c['bytes'] for c in stored.manifest['chunks']) / rounds
    ours_per_round = (t_rec - t_plain) / rounds
    model, n_j = make(), 3
    t = time.perf_counter()
    for i in range(n_j): jacrev_factors(model, batch(i))
    jac_per_round = (time.perf_counter() - t) / n_j
    # every layer scope, layers 1 and 6 included (no target)
    t_all = np.median([train(rounds, lambda m: RegretRecorder(m, 'mse', 'layers', tmp / f'all{j}', DATA[:64], rounds)) for j in range(reps)])
    all_bytes = sum(c['bytes'] for c in RegretRecording(tmp / 'all0').manifest['chunks']) / rounds
    return dict(overhead=t_rec / t_plain, target_overhead=1.5, speedup_vs_jacrev=jac_per_round / ours_per_round, target_speedup=10,
                plain_ms_per_round=1e3 * t_plain / rounds, recording_ms_per_round=1e3 * ours_per_round,
                jacrev_ms_per_round=1e3 * jac_per_round, bytes_per_round=per_round_bytes,
                all_layers_overhead=t_all / t_plain, all_layers_bytes_per_round=all_bytes)


def p2(rounds=10_000, generic_rounds=4):
    tmp = Path(tempfile.mkdtemp())
    t = time.perf_counter()
    train(rounds, lambda m: RegretRecorder(m, 'mse', SCOPES, tmp / 'big', DATA[:64], rounds))
    t_record = time.perf_counter() - t
    t = time.perf_counter()
    df = hindsight(tmp / 'big', progress=False)
    t_fast = time.perf_counter() - t
    n_prefixes = df.N.nunique()
    # side by side at the generic path's size: the same scopes, the same rounds, the same prefixes
    train(generic_rounds, lambda m: RegretRecorder(m, 'mse', SCOPES, tmp / 'small', DATA[:64], generic_rounds, store_weights=True))
    pref = [1, 2, generic_rounds]
    t = time.perf_counter(); fs = hindsight(tmp / 'small', pref, progress=False); t_fs = time.perf_counter() - t
    t = time.perf_counter(); gs = hindsight_generic(make(), tmp / 'small', pref, progress=False); t_gs = time.perf_counter() - t
    a, b = fs.set_index(['scope', 'N']).taylor_optimum, gs.set_index(['scope', 'N']).taylor_optimum
    agree = float((abs(a - b.loc[a.index]) / abs(b.loc[a.index])).max())
    unit = len(SCOPES) * len(pref) * generic_rounds
    return dict(seconds=t_fast, target_seconds=60, speedup_vs_generic=(t_gs / unit) / (t_fast / (len(SCOPES) * n_prefixes * rounds)),
                target_speedup=100, prefixes=n_prefixes, scopes=df.scope.nunique(), record_seconds=t_record,
                small_fast_seconds=t_fs, small_generic_seconds=t_gs, small_speedup=t_gs / t_fs, max_rel_diff_fast_vs_generic=agree)


def main():
    r1 = p1()
    print(f'P1 details: plain {r1["plain_ms_per_round"]:.3f} ms/round, recording +{r1["recording_ms_per_round"]:.3f} ms/round, '
          f'{r1["bytes_per_round"] / 1e3:.1f} kB/round; per-sample jacrev {r1["jacrev_ms_per_round"]:.1f} ms/round; '
          f'every layer scope (layers 1-6): overhead {r1["all_layers_overhead"]:.2f}x, {r1["all_layers_bytes_per_round"] / 1e3:.1f} kB/round')
    r2 = p2()
    print(f'P2 details: {r2["scopes"]} scopes x {r2["prefixes"]} prefixes x 10000 rounds in {r2["seconds"]:.1f} s '
          f'(recording them took {r2["record_seconds"]:.1f} s); at the generic size ({len(SCOPES)} scopes, 3 prefixes, 4 rounds) '
          f'fast {r2["small_fast_seconds"]:.2f} s vs generic {r2["small_generic_seconds"]:.1f} s; '
          f'max relative difference of the optima {r2["max_rel_diff_fast_vs_generic"]:.1e}')
    return (r1, line('P1', overhead=r1['overhead'], target_overhead=1.5, speedup_vs_jacrev=r1['speedup_vs_jacrev'], target_speedup=10)), \
           (r2, line('P2', seconds=r2['seconds'], target_seconds=60, speedup_vs_generic=r2['speedup_vs_generic'], target_speedup=100))
