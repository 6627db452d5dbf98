"""Cross-checks of ntaylor_nb.regret: fast path vs generic path vs independent scipy solvers, storage, failure injection."""
import numpy as np
import pytest
import scipy.linalg as sl
import scipy.optimize as so
import torch
import torch.nn as nn
import torch.nn.functional as F

from ntaylor_nb.regret import (RegretRecorder, RegretRecording, hindsight, hindsight_generic, regret_exponents,
                               regret_scopes)
from ntaylor_nb.schedules import every
from ntaylor_nb.taylor import Scope, scope_weights, taylor_output


class SkipMLP(nn.Module):
    "Not a plain chain (a skip connection): exercises the general (torch.func) recording path."
    def __init__(self):
        super().__init__()
        self.l1, self.r1, self.l2, self.r2, self.l3 = nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 6)
    def forward(self, x):
        h = self.r1(self.l1(x))
        return self.l3(self.r2(self.l2(h))) + 0.5 * x


def autoencoder(): return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 6))
def convnet(): return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 3))


def train(make, loss, scopes, path, rounds=12, B=10, lr=0.05, seed=0, opt='adam', chunk_rounds=5, record=True, **kw):
    torch.manual_seed(seed)
    model = make().double()
    g = torch.Generator().manual_seed(seed + 1)
    conv = isinstance(model[0], nn.Conv2d) if isinstance(model, nn.Sequential) else False
    X = torch.randn(200, 1, 4, 4, generator=g, dtype=torch.float64) if conv else torch.randn(200, 6, generator=g, dtype=torch.float64)
    Y = torch.randint(0, 3, (200,), generator=g) if loss == 'cross_entropy' else X.reshape(200, -1)[:, :6] * 0.5
    o = {'adam': torch.optim.Adam, 'sgd': torch.optim.SGD}[opt](model.parameters(), lr=lr)
    rec = RegretRecorder(model, loss, scopes, path, X[:B], rounds, chunk_rounds=chunk_rounds, neurons_per_layer=2, **kw) if record else None
    losses = []
    if rec: rec.__enter__()
    for step in range(rounds):
        i = torch.randint(0, 200, (B,), generator=g)
        x, y = X[i], Y[i]
        out = model(x)
        l = F.mse_loss(out, y) if loss == 'mse' else F.cross_entropy(out, y)
        o.zero_grad(); l.backward()
        if rec: rec.maybe(step, x, y)
        o.step(); losses.append(l.item())
    if rec: rec.__exit__(None, None, None)
    return model, losses


def affine_maps(model, rec, scope, W_rounds, batches):
    "Per round, the Taylor output as an explicit affine map T(v) = T0 + M v, from taylor_output at v = 0 and unit vectors."
    out = []
    for W, (x, y) in zip(W_rounds, batches):
        Ws = scope_weights(model, scope, W)
        shapes = {k: v.shape for k, v in Ws.items()}
        P = sum(v.numel() for v in Ws.values())
        def unflat(v):
            d, o = {}, 0
            for k, sh in shapes.items(): n = int(np.prod(sh)); d[k] = v[o:o + n].reshape(sh); o += n
            return d
        T0 = taylor_output(model, x, unflat(torch.zeros(P, dtype=torch.float64)), scope, W).reshape(len(x), -1)
        cols = [(taylor_output(model, x, unflat(torch.eye(P, dtype=torch.float64)[i]), scope, W).reshape(len(x), -1) - T0) for i in range(P)]
        out.append((T0.numpy(), torch.stack(cols, -1).numpy(), y.numpy()))
    return out


def rounds_of(rec, names):
    W_rounds, batches = [], []
    for d in rec.chunks():
        offs = np.concatenate([[0], np.cumsum(d['B'])])
        for r in range(len(d['B'])):
            W_rounds.append({k: torch.from_numpy(d[f'w/{k}'][r].copy()) for k in names})
            batches.append((torch.from_numpy(d['batch_x'][offs[r]:offs[r + 1]].copy()), torch.from_numpy(d['batch_y'][offs[r]:offs[r + 1]].copy())))
    return W_rounds, batches


@pytest.mark.parametrize('make', [autoencoder, SkipMLP], ids=['chain-replay', 'general-torch.func'])
def test_mse_fast_equals_generic_and_scipy_lstsq(make, tmp_path):
    scopes = ['layer:0', 'neuron:0:1', 'neuron:2:2', 'layer:6'] if make is autoencoder else ['layer:l1', 'neuron:l2:3', 'layer:l3']
    model, _ = train(make, 'mse', scopes, tmp_path / 'r', store_weights=True)
    rec = RegretRecording(tmp_path / 'r')
    assert rec.manifest['fast'] == (make is autoencoder)
    prefixes = [1, 4, 12]
    fast = hindsight(rec, prefixes, progress=False).set_index(['scope', 'N'])
    gen = hindsight_generic(model, rec, prefixes, progress=False).set_index(['scope', 'N'])
    np.testing.assert_allclose(fast.taylor_optimum, gen.loc[fast.index].taylor_optimum, rtol=1e-8, atol=1e-14)
    # independent: explicit affine maps from taylor_output, then scipy's least squares on the stacked rounds
    W_rounds, batches = rounds_of(rec, [k for k, _ in model.named_parameters()])
    losses = rec.column('loss')
    for s in scopes:
        maps = affine_maps(model, rec, Scope.parse(s), W_rounds, batches)
        for N in prefixes:
            A = np.concatenate([M.reshape(-1, M.shape[-1]) / np.sqrt(M.shape[0] * M.shape[1]) for T0, M, y in maps[:N]])
            b = np.concatenate([(y.reshape(len(y), -1) - T0).reshape(-1) / np.sqrt(T0.size) for T0, M, y in maps[:N]])
            v, *_ = sl.lstsq(A, b, cond=1e-10)  # an explicit cutoff: the default lets rounding noise in singular directions through
            ref = float(((A @ v - b) ** 2).sum()) / N
            assert fast.loc[(s, N)].taylor_optimum == pytest.approx(ref, rel=1e-8, abs=1e-12)
            assert fast.loc[(s, N)].cumulative_loss == pytest.approx(losses[:N].sum(), rel=1e-15)


def test_cross_entropy_convnet_matches_scipy(tmp_path):
    "Neuron and layer scopes of a convnet with max-pooling: L-BFGS optimum vs scipy's BFGS on explicit affine maps."
    scopes = ['neuron:0:1', 'neuron:4:2', 'layer:4']
    model, _ = train(convnet, 'cross_entropy', scopes, tmp_path / 'c', rounds=8, B=40, store_weights=True)
    rec = RegretRecording(tmp_path / 'c')
    fast = hindsight(rec, [8], progress=False).set_index('scope')
    gen = hindsight_generic(model, rec, [8], progress=False).set_index('scope')
    W_rounds, batches = rounds_of(rec, [k for k, _ in model.named_parameters()])
    for s in scopes:
        maps = affine_maps(model, rec, Scope.parse(s), W_rounds, batches)
        T0 = np.concatenate([m[0] for m in maps]); M = np.concatenate([m[1] for m in maps]); y = np.concatenate([m[2] for m in maps])
        w = np.repeat([1 / len(m[2]) for m in maps], [len(m[2]) for m in maps])
        def f(v):
            z = T0 + M @ v
            zmax = z.max(1, keepdims=True); lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(1))
            p = np.exp(z - lse[:, None]); p[np.arange(len(y)), y] -= 1
            return float((w * (lse - z[np.arange(len(y)), y])).sum()), np.einsum('n,no,nop->p', w, p, M)
        r = so.minimize(f, np.zeros(M.shape[-1]), jac=True, method='BFGS', options=dict(gtol=1e-10, maxiter=10000))
        ref = r.fun / 8
        assert fast.loc[s].taylor_optimum == pytest.approx(ref, rel=1e-6), s
        assert gen.loc[s].taylor_optimum == pytest.approx(ref, rel=1e-6), s
        assert fast.loc[s].grad_norm < 1e-6


def test_dead_neuron_regret_is_exactly_zero(tmp_path):
    "A neuron that never fires never moves; its Taylor loss is constant, so its regret is 0 at every prefix."
    def make():
        m = autoencoder()
        with torch.no_grad(): m[2].bias[1] = -1e6  # neuron 1 of layer 2 is dead
        return m
    train(make, 'mse', ['neuron:2:1', 'neuron:2:0'], tmp_path / 'd', rounds=20)
    df = hindsight(tmp_path / 'd', progress=False)
    dead = df[df.scope == 'neuron:2:1']
    assert np.all(np.abs(dead.regret) <= 1e-12 * dead.cumulative_loss)
    assert (df[df.scope == 'neuron:2:0'].regret > 1e-8).any()


def test_recorder_never_changes_training(tmp_path):
    for make, loss, scopes in [(autoencoder, 'mse', 'paper'), (SkipMLP, 'mse', 'layers'), (convnet, 'cross_entropy', 'paper')]:
        a, la = train(make, loss, scopes, tmp_path / f'{make.__name__}', rounds=15, record=True, store_weights=True)
        b, lb = train(make, loss, scopes, None, rounds=15, record=False)
        for (k, p), (_, q) in zip(a.named_parameters(), b.named_parameters()): assert torch.equal(p, q), (make.__name__, k)
        assert la == lb
        rec = RegretRecording(tmp_path / f'{make.__name__}')
        np.testing.assert_array_equal(rec.column('loss'), la)  # the recorded losses are the training loop's


def test_chunking_does_not_change_any_number(tmp_path):
    train(autoencoder, 'mse', 'paper', tmp_path / 'a', rounds=17, chunk_rounds=1)
    train(autoencoder, 'mse', 'paper', tmp_path / 'b', rounds=17, chunk_rounds=100)
    a, b = hindsight(tmp_path / 'a', progress=False), hindsight(tmp_path / 'b', progress=False)
    assert len(RegretRecording(tmp_path / 'a').manifest['chunks']) == 17
    np.testing.assert_array_equal(a.drop(columns='grad_norm').values, b.drop(columns='grad_norm').values)


def test_schedule_records_some_rounds(tmp_path):
    train(autoencoder, 'mse', ['layer:2'], tmp_path / 's', rounds=10, schedule=every(3))
    rec = RegretRecording(tmp_path / 's')
    assert list(rec.column('step')) == [0, 3, 6, 9] and rec.manifest['schedule'] == 'every 3th step'
    df = hindsight(rec, progress=False)
    assert list(df.N) == [1, 2, 3, 4] and list(df.step) == [0, 3, 6, 9]


def test_exponents_table(tmp_path):
    train(autoencoder, 'mse', 'paper', tmp_path / 'e', rounds=30)
    ex = regret_exponents(hindsight(tmp_path / 'e', progress=False), lo=2, n_boot=50)
    assert set(ex.kind) == {'layer', 'neuron'} and ex.exponent.notna().all()
    assert (ex.ci_low <= ex.exponent + 1e-12).all() and (ex.exponent <= ex.ci_high + 1e-12).all()


def test_bad_inputs(tmp_path):
    model = autoencoder().double(); x = torch.randn(4, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match='allowed'): RegretRecorder(model, 'l1', 'layers', tmp_path / 'a', x, 10)
    with pytest.raises(ValueError, match="unknown layer 'nope'"): RegretRecorder(model, 'mse', ['layer:nope'], tmp_path / 'b', x, 10)
    with pytest.raises(ValueError, match='allowed: layers, neurons, paper, full'): regret_scopes(model, 'most')
    with pytest.raises(ValueError, match='needs store_weights=True'): RegretRecorder(model, 'mse', 'full', tmp_path / 'c', x, 10)
    with pytest.raises(ValueError, match=r'would take about .* GB on disk .* budget 0.00 GB'):
        RegretRecorder(model, 'mse', 'paper', tmp_path / 'd', x, 10**6, disk_budget=1e3)
    assert not (tmp_path / 'd').exists(), 'a refused recorder writes nothing'
    train(autoencoder, 'mse', ['layer:2'], tmp_path / 'e', rounds=10, chunk_rounds=4)
    with pytest.raises(FileExistsError): RegretRecorder(model, 'mse', 'layers', tmp_path / 'e', x, 10)
    with pytest.raises(ValueError, match=r'prefixes must lie in 1..10'): hindsight(tmp_path / 'e', [0, 5], progress=False)
    with pytest.raises(ValueError, match='were not recorded'): hindsight(tmp_path / 'e', scopes=['layer:4'], progress=False)
    f = tmp_path / 'e' / 'chunk_00001.bin'
    data = f.read_bytes(); f.write_bytes(data[:-3])
    with pytest.raises(ValueError, match='truncated or missing'): RegretRecording(tmp_path / 'e')
    f.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    with pytest.raises(ValueError, match='does not match its checksum'): hindsight(tmp_path / 'e', progress=False)
    with pytest.raises(FileNotFoundError): RegretRecording(tmp_path / 'nothing')


@pytest.mark.parametrize('make,loss', [(autoencoder, 'mse'), (SkipMLP, 'mse'), (convnet, 'cross_entropy')], ids=['chain', 'general', 'conv-ce'])
def test_size_estimate_is_what_is_written(make, loss, tmp_path):
    train(make, loss, 'paper', tmp_path / 'z', rounds=6, chunk_rounds=3)
    rec = RegretRecording(tmp_path / 'z')
    written = sum(c['bytes'] for c in rec.manifest['chunks']) / len(rec)
    assert written == rec.manifest['estimate']['bytes_per_round']
