"""Cross-checks of ntaylor_nb.regret: fast path vs generic path vs independent scipy solvers, storage, failure injection."""
import numpy as np
import pytest
import scipy.linalg as sl
import scipy.optimize as so
import torch
import torch.nn as nn
import torch.nn.functional as F

from ntaylor_nb.growth import regret_exponents
from ntaylor_nb.hindsight import hindsight
from ntaylor_nb.hindsight_generic import hindsight_generic
from ntaylor_nb.regret import RegretRecorder, RegretRecording, regret_scopes
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
    rec = RegretRecorder(model, loss, scopes, path, X[:B], rounds, chunk_size=chunk_rounds, neurons_per_layer=2, **kw) if record else None
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
    "Neuron and layer scopes of a convnet with max-pooling: the Newton optimum vs scipy's BFGS on explicit affine maps."
    scopes = ['neuron:0:1', 'neuron:4:2', 'layer:4', 'layer:0']
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
    many = ex[ex.runs > 1]  # an interval over a layer's neurons; a single scope (a layer scope of one run) has none
    assert len(many) and (many.ci_low <= many.exponent + 1e-12).all() and (many.exponent <= many.ci_high + 1e-12).all()
    assert ex[ex.runs == 1].ci_low.isna().all() and ex[ex.runs == 1].ci_high.isna().all() and (ex.runs == 1).any()


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
    with pytest.raises(ValueError, match="device='gpu'; allowed: 'auto', 'cpu', 'cuda'"): hindsight(tmp_path / 'e', device='gpu', progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='no CUDA device is visible'): hindsight(tmp_path / 'e', device='cuda', progress=False)
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


# ---- the convex solver for cross-entropy (and any loss on a convolution): batched damped Newton ----

from torch.func import grad as fgrad, hessian as fhessian

from ntaylor_nb.solvers import ConvSamples, LinearSamples, Problems, newton as _newton


def random_data(fmt, n=37, p=4, C=3, K1=5, seed=0, loss='cross_entropy'):
    "Stored samples in the recorder's format: (f0, y, s, X, J, a) for a Linear layer, (f0, y, s, M, m0) for a convolution."
    g = torch.Generator().manual_seed(seed)
    r = lambda *sh: torch.randn(*sh, generator=g, dtype=torch.float64)
    y = torch.randint(0, p, (n,), generator=g) if loss == 'cross_entropy' else r(n, p)
    s = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    if fmt == 'linear': return LinearSamples(r(n, p), y, s, torch.cat([r(n, K1 - 1), torch.ones(n, 1, dtype=torch.float64)], 1), r(n, p, C), r(n, C))
    return ConvSamples(r(n, p), y, s, r(n, p, C, K1), r(n, p, C))


def reference_z(D, fmt, col, v):
    "The Taylor outputs written out from the definitions (no structure exploited)."
    if fmt == 'linear':
        f0, _, _, X, J, a = D
        if col is None: return f0 + torch.einsum('noc,nc->no', J, X @ v.reshape(J.shape[2], -1).T - a)
        return f0 + J[:, :, col] * (X @ v - a[:, col])[:, None]
    f0, _, _, M, m0 = D
    if col is None: return f0 + torch.einsum('npck,ck->np', M, v.reshape(M.shape[2], -1)) - m0.sum(2)
    return f0 + M[:, :, col] @ v - m0[:, :, col]


def reference_loss(D, fmt, col, loss):
    y, s = D[1], D[2]
    if loss == 'cross_entropy': return lambda v: (F.cross_entropy(reference_z(D, fmt, col, v), y, reduction='none') * s).sum()
    return lambda v: (((reference_z(D, fmt, col, v) - y) ** 2).sum(1) * s).sum()


@pytest.mark.parametrize('loss', ['cross_entropy', 'mse'])
@pytest.mark.parametrize('fmt', ['linear', 'conv'])
@pytest.mark.parametrize('chunk_bytes', [2 ** 28, 1], ids=['one-chunk', 'sample-by-sample'])
def test_problem_value_gradient_hessian_equal_autograd(fmt, loss, chunk_bytes):
    "The structured value, gradient and Hessian (rank-1, Kronecker, explicit design) against torch.func on the definitions."
    D = random_data(fmt, loss=loss)
    cols = torch.tensor([2, 0])
    neurons, layer = Problems(D, loss, cols, chunk_bytes=chunk_bytes), Problems(D, loss, chunk_bytes=chunk_bytes)
    g = torch.Generator().manual_seed(5)
    V = torch.randn(2, neurons.size(), generator=g, dtype=torch.float64)
    f, gr, H = neurons.evaluate(V, torch.arange(2))
    for k, c in enumerate(cols.tolist()):
        ref = reference_loss(D, fmt, c, loss)
        torch.testing.assert_close(f[k], ref(V[k]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gr[k], fgrad(ref)(V[k]), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(H[k], fhessian(ref)(V[k]), rtol=1e-10, atol=1e-12)
    W = torch.randn(1, layer.size(), generator=g, dtype=torch.float64)
    assert layer.size() == 3 * 5
    f, gr, H = layer.evaluate(W, torch.zeros(1, dtype=torch.long))
    ref = reference_loss(D, fmt, None, loss)
    torch.testing.assert_close(f[0], ref(W[0]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gr[0], fgrad(ref)(W[0]), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(H[0], fhessian(ref)(W[0]), rtol=1e-10, atol=1e-12)
    # several points of the layer scope at once (a line search's step sizes): each point's value and gradient
    W3 = torch.cat([W, torch.randn(2, layer.size(), generator=g, dtype=torch.float64)])
    f3, g3, _ = layer.evaluate(W3, torch.zeros(1, dtype=torch.long), hess=False)
    for k in range(3):
        torch.testing.assert_close(f3[k], ref(W3[k]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g3[k], fgrad(ref)(W3[k]), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match='one point at a time'): layer.evaluate(W3, torch.zeros(1, dtype=torch.long))


@pytest.mark.parametrize('fmt', ['linear', 'conv'])
def test_newton_matches_scipy_and_batching_changes_nothing(fmt):
    "Non-separable problems: the minimum equals scipy's (BFGS to gtol 1e-11); all neurons at once equals one at a time."
    D = random_data(fmt, n=400, p=3, C=4, K1=4, seed=1)
    D = D._replace(s=D.s / D.s.sum() * 10)  # weights summing to 10 "rounds"
    cols = torch.arange(4)
    prob = Problems(D, 'cross_entropy', cols)
    tol = 1e-9 * 10
    V, f, gn, lam, it = _newton(prob, torch.arange(4), torch.zeros(4, 4, dtype=torch.float64), tol)
    assert (lam / 2 <= tol).all() and (it >= 2).all()
    for k in range(4):
        ref = reference_loss(D, fmt, k, 'cross_entropy')
        fun = lambda v: (lambda t: (float(ref(t)), fgrad(ref)(t).numpy()))(torch.from_numpy(v))
        r = so.minimize(fun, np.zeros(4), jac=True, method='BFGS', options=dict(gtol=1e-11, maxiter=10000))
        assert float(f[k]) == pytest.approx(r.fun, rel=1e-10)
        np.testing.assert_allclose(V[k].numpy(), r.x, atol=1e-4)
        V1, f1, *_ = _newton(prob, torch.tensor([k]), torch.zeros(1, 4, dtype=torch.float64), tol)
        assert float(f1[0]) == pytest.approx(float(f[k]), rel=1e-13)


def test_newton_on_separable_data_approaches_the_infimum():
    "More variables than samples: the infimum 0 is only approached at infinity; Newton stops within tol of it, and the reported value is the loss at the returned point."
    D = random_data('linear', n=6, p=3, C=2, K1=12, seed=2)
    prob = Problems(D, 'cross_entropy')
    tol = 1e-9 * float(D[2].sum())
    V, f, gn, lam, it = _newton(prob, torch.zeros(1, dtype=torch.long), torch.zeros(1, prob.size(), dtype=torch.float64), tol)
    assert 0 <= float(f[0]) <= 2 * tol and lam[0] / 2 <= tol
    assert float(f[0]) == pytest.approx(float(reference_loss(D, 'linear', None, 'cross_entropy')(V[0])), rel=1e-12, abs=1e-300)
    assert float(V.norm()) > 10  # it went far out, as it has to
    # the expanding line search is what gets it there quickly: backtracking alone needs more Newton steps to the same tol
    Vp, fp, _, lamp, itp = _newton(prob, torch.zeros(1, dtype=torch.long), torch.zeros(1, prob.size(), dtype=torch.float64), tol, expand=False)
    assert lamp[0] / 2 <= tol and 0 < float(fp[0]) <= 2 * tol and int(it[0]) < int(itp[0])
    assert float(fp[0]) == pytest.approx(float(reference_loss(D, 'linear', None, 'cross_entropy')(Vp[0])), rel=1e-12)  # a value above 0 here
    # stopped by the iteration cap (backtracking only: expanded, one step suffices here), the decrement reported is the one at the point returned
    V1, f1, g1, lam1, it1 = _newton(prob, torch.zeros(1, dtype=torch.long), torch.zeros(1, prob.size(), dtype=torch.float64), tol, max_iter=3, expand=False)
    assert int(it1[0]) == 3 and lam1[0] / 2 > tol
    _, g_at, H_at = prob.evaluate(V1, torch.zeros(1, dtype=torch.long))
    torch.testing.assert_close(lam1[0], g_at[0] @ torch.linalg.solve(H_at[0] + 1e-13 * H_at[0].diagonal().max() * torch.eye(prob.size(), dtype=torch.float64), g_at[0]), rtol=1e-6, atol=0)


def test_newton_cg_on_separable_data_reaches_the_infimum():
    "The matrix-free Newton with the expanding line search: one Newton step to the infimum 0 (backtracking alone needs many); each stops by its value (within tol of 0) or by a decrement confirmed by a tight CG solve."
    from ntaylor_nb.solvers_free import newton_cg
    D = random_data('linear', n=6, p=3, C=2, K1=12, seed=2)
    prob = Problems(D, 'cross_entropy')
    tol = 1e-9 * float(D[2].sum())
    V, f, gn, lam2, it = newton_cg(prob, torch.zeros(prob.size(), dtype=torch.float64), tol)
    Vp, fp, _, lamp, itp = newton_cg(prob, torch.zeros(prob.size(), dtype=torch.float64), tol, expand=False)
    assert 0 <= f <= tol and lam2 == float('inf')  # stopped by its value: no direction made at the point returned
    assert 0 < fp <= 2 * tol and min(lamp / 2, fp) <= tol and it < itp
    ref = reference_loss(D, 'linear', None, 'cross_entropy')
    assert fp == pytest.approx(float(ref(Vp.reshape(-1))), rel=1e-12)
    _, fd, *_ = _newton(prob, torch.zeros(1, dtype=torch.long), torch.zeros(1, prob.size(), dtype=torch.float64), tol)
    assert abs(f - float(fd[0])) <= 4 * tol  # the dense Newton's infimum, within the two stops


@pytest.mark.parametrize('start,max_iter', [('zero', 100), ('minimum', 1), ('minimum', 0)])
def test_newton_cg_certifies_no_decrement_its_confirmation_left_unresolved(monkeypatch, start, max_iter):
    "A confirmation CG that runs to its cap with its last steps still falling leaves the decrement known only from below: a solve that then ends (at its cap, or with no decrease) reports it as inf, not as a small number a certificate would take."
    from ntaylor_nb import solvers_free
    D = random_data('linear', n=40, p=3, C=2, K1=4, seed=1)  # more samples than variables: a finite minimum
    prob = Problems(D, 'cross_entropy')
    tol, P = 1e-9 * float(D[2].sum()), prob.size()
    V, f, _, lam2, _ = solvers_free.newton_cg(prob, torch.zeros(P, dtype=torch.float64), tol)
    assert lam2 / 2 <= tol < f  # the real thing: certified by a confirmed decrement
    real, calls = solvers_free.quad_cg, []
    def unresolved(*a, **k):  # the confirmation (its cap 4 P) reports its cap reached, its last steps falling by tol / 5
        out = real(*a, **k)
        if k['max_iter'] != 4 * P: return out
        calls.append(1)
        return out[0], out[1], tol / 5, out[3], k['max_iter']
    monkeypatch.setattr(solvers_free, 'quad_cg', unresolved)
    V1, f1, _, lam1, it1 = solvers_free.newton_cg(prob, torch.zeros(P, dtype=torch.float64) if start == 'zero' else V, tol, max_iter=max_iter)
    assert calls and lam1 == float('inf')
    assert f1 == pytest.approx(f, rel=1e-9)  # the same minimum, reached: only the certificate is withheld


def test_warm_started_prefixes_equal_cold_solves(tmp_path):
    "The solver warm-starts each prefix from the last; the optimum at a prefix must not depend on which prefixes came before."
    scopes = ['neuron:0:1', 'neuron:4:2', 'layer:4', 'layer:0']
    train(convnet, 'cross_entropy', scopes, tmp_path / 'w', rounds=12, B=40)
    warm = hindsight(tmp_path / 'w', [1, 2, 5, 12], progress=False).set_index(['scope', 'N'])
    for N in (5, 12):
        cold = hindsight(tmp_path / 'w', [N], progress=False).set_index(['scope', 'N'])
        for s in scopes:
            assert warm.loc[(s, N)].taylor_optimum == pytest.approx(cold.loc[(s, N)].taylor_optimum, rel=1e-8, abs=1e-9), (s, N)


def test_mse_on_a_convolution_matches_lstsq(tmp_path):
    "Mean-squared error on a convolution goes through the same solver (a quadratic: Newton is exact); scipy's lstsq on explicit affine maps agrees."
    def convreg(): return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 6))
    scopes = ['neuron:0:1', 'layer:0']
    model, _ = train(convreg, 'mse', scopes, tmp_path / 'q', rounds=6, B=20, store_weights=True)
    rec = RegretRecording(tmp_path / 'q')
    fast = hindsight(rec, [6], progress=False).set_index('scope')
    W_rounds, batches = rounds_of(rec, [k for k, _ in model.named_parameters()])
    for s in scopes:
        maps = affine_maps(model, rec, Scope.parse(s), W_rounds, batches)
        A = np.concatenate([M.reshape(-1, M.shape[-1]) / np.sqrt(M.shape[0] * M.shape[1]) for T0, M, y in maps])
        b = np.concatenate([(y.reshape(len(y), -1) - T0).reshape(-1) / np.sqrt(T0.size) for T0, M, y in maps])
        v, *_ = sl.lstsq(A, b, cond=1e-10)
        assert fast.loc[s].taylor_optimum == pytest.approx(float(((A @ v - b) ** 2).sum()) / 6, rel=1e-8), s


def test_layers_are_numbered_from_the_input_as_in_the_paper(tmp_path):
    "Tables carry the paper's layer number next to the module path; figures label layers by it."
    from ntaylor_nb.taylor import weight_layers
    from ntaylor_nb.regret_figures import _layer_name
    train(autoencoder, 'mse', ['layer:2', 'neuron:4:1', 'neuron:6:0'], tmp_path / 'n', rounds=4)
    df = hindsight(tmp_path / 'n', progress=False)
    want = {v: k for k, v in weight_layers(autoencoder()).items()}  # module path -> number
    assert want == {'0': 1, '2': 2, '4': 3, '6': 4}
    assert all(df.layer_number == df.layer.map(want))
    mf = RegretRecording(tmp_path / 'n').manifest
    assert {l: e['number'] for l, e in mf['layers'].items()} == {'2': 2, '4': 3, '6': 4}
    assert _layer_name(df)('4') == 'layer 3 (module 4)' and _layer_name(df.drop(columns='layer_number'))('4') == 'layer 4'


def _line_search_one_at_a_time(value, V, d, f, slope, expand, along):
    "The line search as it was written before its doublings were batched: one doubling a value call (the reference)."
    U = len(V)
    t = torch.ones(U, dtype=V.dtype); acc = torch.zeros(U, dtype=torch.bool); Vn, fn = V.clone(), f.clone()
    for _ in range(60):
        w = (~acc).nonzero()[:, 0]
        trial = V[w] - t[w, None] * d[w]
        ft = value(t[w], w) if along else value(trial, w)
        ok = ft <= f[w] - 1e-4 * t[w] * slope[w]
        Vn[w[ok]], fn[w[ok]] = trial[ok], ft[ok]; acc[w[ok]] = True
        t[w[~ok]] /= 2
        if bool(acc.all()): break
    grow = acc & (t == 1) if expand else torch.zeros_like(acc)
    for _ in range(40):
        w = grow.nonzero()[:, 0]
        if not len(w): break
        trial = V[w] - 2 * t[w, None] * d[w]
        ft = value(2 * t[w], w) if along else value(trial, w)
        better = (ft < fn[w]) & (ft <= f[w] - 2e-4 * t[w] * slope[w])
        Vn[w[better]], fn[w[better]] = trial[better], ft[better]; t[w[better]] *= 2
        grow[w[~better]] = False
    return Vn, fn, acc


@pytest.mark.parametrize('along', [False, True])
def test_line_search_batched_doublings_decide_as_one_at_a_time(along):
    """The line search values its halvings and doublings in batches (1, 2, 4, 8 step sizes at once); on problems that take no
    doubling, a few, exactly a batch's worth, more, and all 40 (separable ones: the value falls all the way, or underflows to 0
    and stops), 3 halvings, a batch's worth, and no decrease in 60, its points, values and acceptances equal a one-at-a-time
    loop's, bit for bit."""
    from ntaylor_nb.solvers import line_search
    g = torch.Generator().manual_seed(5)
    U, P = 13, 3
    a = torch.rand(U, generator=g, dtype=torch.float64) + 0.5
    m = torch.tensor([0, 0, 0, 0, 1, 2, 0.3, 5, 1e-3, 1e-14, 0, 0, -1], dtype=torch.float64)  # margins: 0 a bounded problem, > 0 one that falls along d
    c = torch.tensor([1, 3, 8, 128, 1, 1, 1, 1, 1, 1, 2 ** -3, 2 ** -7, 1], dtype=torch.float64)  # the minimum of a bounded problem along d, in steps
    V, d = torch.zeros(U, P, dtype=torch.float64), -torch.randn(U, P, generator=g, dtype=torch.float64)

    def f_at(t, k):  # along -d: a parabola with its minimum at step c (m = 0), a logistic tail log(1 + e^(a - m t)) (m > 0), rising (m < 0)
        return torch.where(m[k] == 0, a[k] * (t - c[k]) ** 2, torch.where(m[k] > 0, torch.nn.functional.softplus(a[k] - m[k] * t), t))
    value = (lambda t, k: f_at(t, k)) if along else (lambda W, k: f_at(((V[k] - W) * d[k]).sum(-1) / (d[k] * d[k]).sum(-1), k))
    f0 = f_at(torch.zeros(U, dtype=torch.float64), torch.arange(U))
    slope = torch.where(m == 0, 2 * a * c, torch.where(m > 0, m * torch.sigmoid(a), 1.0))  # the rising one: a slope it never meets
    for expand in (False, True):
        got = line_search(value, V, d, f0, slope, expand, along=along)
        want = _line_search_one_at_a_time(value, V, d, f0, slope, expand, along)
        for x, y in zip(got, want): assert torch.equal(x, y)
    t = ((V - got[0]) * d).sum(-1) / (d * d).sum(-1)
    # doublings taken: none, one, a batch's end (1 + 2, 1 + 2 + 4), past it, and the cap (40: a value that keeps falling)
    assert t[:4].tolist() == [1, 2, 8, 128] and (t[4:9] >= 2 ** 8).all() and t[9] == 2.0 ** 40
    # halvings taken: 3, and a batch's end (1 + 2 + 4: t = 2^-7 is the 8th size tried); no decrease in 60 halvings: not moved
    assert t[10:12].tolist() == [2 ** -3, 2 ** -7] and t[12] == 0 and not got[2][12] and got[2][:12].all()


def test_newton_stop_does_not_depend_on_the_inputs_scales(monkeypatch):
    """A change of variables, the conv toy's input channels scaled by 1 .. 1e-3 (columns of M), leaves the minimum where it was.
    `_factor`'s ridge is the same for every variable, so the decrement alone stopped 'certified' 16 and 39 tol above it;
    with `_recheck` (the decrement with the ridge relative to each variable's own curvature, and a look along its direction)
    what is reported certified is within 2 tol of it (1.4 and 1.8 tol; the unscaled solve's own stop: 0.8 and 1.2), also
    where the cap ends a run. (The half decrement is an estimate: 0.7 and 0.15 tol there.)"""
    import ntaylor_nb.solvers as sv
    from ntaylor_nb.conv_solvers import _toy
    _, _, D = _toy(n=100, Cin=16, H=6, sparse=0.95, seed=0, p=10)
    tol, zero, idx = 1e-9 * float(D.s.sum()), torch.zeros(2, 145, dtype=torch.float64), torch.arange(2)
    _, f0, _, lam0, _ = _newton(Problems(D, 'cross_entropy', idx), idx, zero, 1e-6 * tol, max_iter=1000)  # the minimum, tight
    assert (lam0 / 2 <= 1e-4 * tol).all()  # (it meets 1e-6 tol on some machines; on an AMD EPYC with two threads rounding stops it at 1.1e-6 tol)
    col = torch.cat([torch.logspace(0, -3, 16, dtype=torch.float64).repeat_interleave(9), torch.ones(1, dtype=torch.float64)])  # unfold's order: channel-major
    Ds = D._replace(M=D.M * col)
    for cap in (300, 27, 28, 29, 30):  # to its stop; ended by the cap (the decrement alone stopped it at 27)
        _, f1, _, lam1, _ = _newton(Problems(Ds, 'cross_entropy', idx), idx, zero, tol, max_iter=cap)
        cert = lam1 / 2 <= tol
        assert (cap < 300 or cert.all()) and ((f1 - f0)[cert] <= 2 * tol).all(), (cap, (f1 - f0) / tol, lam1 / 2 / tol)
    monkeypatch.setattr(sv, '_recheck', lambda H, g, f, lam2, along, tol: (torch.zeros(len(f), dtype=torch.bool), g, lam2))  # the decrement alone
    _, f2, _, lam2, _ = _newton(Problems(Ds, 'cross_entropy', idx), idx, zero, tol, max_iter=300)
    assert (lam2 / 2 <= tol).all() and ((f2 - f0) / tol).max() > 10, (f2 - f0) / tol  # what it was: certified, and far above the minimum


def test_warm_start_is_the_best_point_on_the_ray_through_the_last_optimum():
    "A prefix starts from the lowest of c v (c = 1, 1/4, ..., 4^-20) and 0, v the last optimum; from far out that is well inside both ends."
    from ntaylor_nb.conv_newton import DenseProblems
    from ntaylor_nb.conv_solvers import _toy
    from ntaylor_nb.hindsight import _DenseAcc
    from ntaylor_nb.solvers import ConvSamples, Problems
    from ntaylor_nb.solvers import newton as _newton
    geom, arrs, D = _toy(n=100, Cin=16, H=6, sparse=0.95, seed=0, p=10)
    two, zero = torch.arange(2), torch.zeros(2, 145, dtype=torch.float64)
    v5 = _newton(Problems(ConvSamples(*(t[:5] for t in D)), 'cross_entropy', two), two, zero, 1e-12, max_iter=500)[0]  # separable for neuron 1
    acc = object.__new__(_DenseAcc); acc.V = {'a': 300 * v5[0], 'b': 300 * v5[1]}  # only the last optima are read
    prob = DenseProblems(Problems(D, 'cross_entropy', two))
    V0, f0 = acc._start(prob, ['a', 'b'], two, 145, 'cpu')
    val = lambda V: prob.evaluate(V, two, grad=False)[0]
    cands = [val(4.0 ** -j * torch.stack([acc.V['a'], acc.V['b']])) for j in range(21)] + [val(zero)]  # the brute-force loop
    best = torch.stack(cands).min(0).values
    assert torch.allclose(f0, val(V0), rtol=1e-12) and torch.allclose(f0, best, rtol=1e-9)
    ends = min(float(cands[0][1]), float(cands[-1][1]))  # neuron 1: 14,699 at the far point, 37.33 at 0
    assert f0[1] < ends - 0.1  # a point inside the ray is lower than both (36.97); the start before took the lower end
    assert torch.equal(V0[0], zero[0])  # neuron 0 is inactive on the 5 samples: its last optimum is 0
    assert acc._start(prob, ['a', 'c'], two, 145, 'cpu')[1] is None  # a scope without a last optimum: from 0



def test_progress_bar_counts_uncertified_solves(tmp_path, monkeypatch):
    "The bar's postfix at each prefix counts the solves that did not meet the stop rule, as the finished table does."
    import tqdm.auto
    import ntaylor_nb.hindsight as hs
    seen = []
    class Bar(tqdm.auto.tqdm):
        def set_postfix_str(self, s='', refresh=True): seen.append(s); super().set_postfix_str(s, refresh)
    monkeypatch.setattr(tqdm.auto, 'tqdm', Bar)
    train(convnet, 'cross_entropy', 'paper', tmp_path / 'c', rounds=8)
    def check(**kw):
        seen.clear()
        df = hindsight(tmp_path / 'c', [2, 5, 8], progress=True, **kw)
        assert seen == [f'N={N}: {int((~g.certified).sum())} of {len(g)} uncertified' for N, g in df.groupby('N')], seen
        return df
    check(solver='lbfgs', scopes=['neuron:4:0'])  # L-BFGS has no certificate: 1 of 1 uncertified at every prefix
    assert seen == [f'N={N}: 1 of 1 uncertified' for N in (2, 5, 8)]
    monkeypatch.setattr(hs, 'GAP_TOL', 0.0)  # a stop rule only exact solves meet: some certified, some not
    df = check()
    assert 0 < df.certified.sum() < len(df)


def test_fast_path_of_a_float32_model_whose_top_hidden_layer_is_wider_than_its_output(tmp_path):
    "The fast MSE path against the generic one on a float32 model (4-12-12-2): W_L' W_L has rank 2, and in float32 its rounding made up curvature (optima off by 1% of the loss, some below 0, all 'certified')."
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 2))  # float32, as trained
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(400, 4, generator=g), torch.randn(400, 2, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with RegretRecorder(model, 'mse', ['layer:0', 'layer:2'], tmp_path / 'r', X[:10], 16, store_weights=True) as rec:
        for step in range(16):
            i = torch.randint(0, 400, (10,), generator=g); x, y = X[i], Y[i]
            loss = F.mse_loss(model(x), y); opt.zero_grad(); loss.backward(); rec.maybe(step, x, y); opt.step()
    P = list(range(1, 17))
    fast, gen = hindsight(tmp_path / 'r', P, progress=False), hindsight_generic(model, tmp_path / 'r', prefixes=P, progress=False)
    m = gen.merge(fast, on=['scope', 'N'], suffixes=('_gen', '_fast'))
    err = (m.taylor_optimum_fast - m.taylor_optimum_gen).abs() / m.average_loss_gen
    assert err.max() < 1e-6 and (m.taylor_optimum_fast > -1e-6 * m.average_loss_gen).all(), m.assign(err=err)[['scope', 'N', 'taylor_optimum_gen', 'taylor_optimum_fast', 'err']]


def test_recorder_refuses_what_would_number_or_record_wrongly(tmp_path):
    "Shared weights, layers registered in another order than applied (the paper numbers them from the input), soft cross-entropy targets."
    class Tied(nn.Module):
        def __init__(self):
            super().__init__(); self.i, self.h, self.o = nn.Linear(6, 4), nn.Linear(4, 4), nn.Linear(4, 6)
        def forward(self, x): return self.o(self.h(self.h(self.i(x)).relu()).relu())
    class Backwards(nn.Module):  # the decoder registered first
        def __init__(self):
            super().__init__(); self.dec, self.enc = nn.Linear(3, 6), nn.Linear(6, 3)
        def forward(self, x): return self.dec(self.enc(x).relu())
    x = torch.randn(8, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"layer\(s\) \['h'\] are applied more than once in a forward pass \(shared weights\)"):
        RegretRecorder(Tied().double(), 'mse', ['layer:h'], tmp_path / 'a', x, 4)
    with pytest.raises(ValueError, match=r"applies its weight layers in the order \['enc', 'dec'\] but registers them as \['dec', 'enc'\]"):
        RegretRecorder(Backwards().double(), 'mse', ['layer:enc'], tmp_path / 'b', x, 4)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    with RegretRecorder(model, 'cross_entropy', ['layer:0'], tmp_path / 'c', x, 4) as rec:
        with pytest.raises(ValueError, match='cross-entropy targets are recorded as class indices'):
            rec.maybe(0, x, torch.softmax(torch.randn(8, 3, dtype=torch.float64), 1))
        rec.maybe(0, x, torch.randint(0, 3, (8,)))  # class indices: recorded
    assert len(RegretRecording(tmp_path / 'c')) == 1


def test_hindsight_refuses_prefixes_and_scopes_it_would_misread(tmp_path):
    "Fractional, empty, nested or non-numeric prefixes and an empty or string scope list: clear errors (2.9 had become round 2, [] a numpy error)."
    train(autoencoder, 'mse', ['layer:2', 'neuron:2:0'], tmp_path / 'r', rounds=6)
    for bad in ([], [2.9], np.geomspace(1, 6, 4), [[1, 2], [3, 4]], [[1], [2, 3]], 5, '3', [True], [float('nan')]):
        with pytest.raises(ValueError, match='a non-empty list of whole numbers of recorded rounds, 1..6'): hindsight(tmp_path / 'r', bad, progress=False)
    for bad in ([], 'layer:2'):
        with pytest.raises(ValueError, match='a non-empty list of recorded scopes, or None'): hindsight(tmp_path / 'r', [3], scopes=bad, progress=False)
    assert hindsight(tmp_path / 'r', np.array([3.0, 6.0, 3.0]), progress=False).N.unique().tolist() == [3, 6]  # whole floats: taken, once each
    model, _ = train(autoencoder, 'mse', ['layer:2'], tmp_path / 'w', rounds=4, store_weights=True)  # the generic path too
    for bad in ([], 'layer:2'):
        with pytest.raises(ValueError, match='a non-empty list of scopes, or None'): hindsight_generic(model, tmp_path / 'w', [2], scopes=bad, progress=False)
    with pytest.raises(ValueError, match='a non-empty list of whole numbers'): hindsight_generic(model, tmp_path / 'w', [2.5], progress=False)


def test_mse_first_prefixes_from_the_rows_against_50_digits(tmp_path):
    """The hindsight notebook's digits autoencoder, its first two rounds: hidden units active on one or two of the 64 samples
    leave the output layer's inputs collinear to 1e-8 .. 1e-9, beyond what Q = A'A resolves (its solve: 4.7% too high on the
    layer scope). Solved from the rows (fast and generic paths) against the minimum of the explicit affine maps in 50 digits."""
    import mpmath
    from unittest import mock
    from sklearn.datasets import load_digits
    from benchmarks.lsq_gap import exact_min  # (a 50-digit least-squares minimum; `python -m pytest` from the repository root)
    digits = torch.tensor(load_digits().data / 16.0)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 64)).double()
    opt, g = torch.optim.Adam(net.parameters(), lr=1e-2), torch.Generator().manual_seed(0)
    scopes = ['layer:6', 'neuron:6:25', 'neuron:6:41', 'neuron:6:49']
    with RegretRecorder(net, 'mse', scopes, tmp_path / 'r', digits[:32], 2, chunk_size=64, store_weights=True) as rec:
        for step in range(2):
            x = digits[torch.randint(0, len(digits), (32,), generator=g)]
            loss = F.mse_loss(net(x), x); opt.zero_grad(); loss.backward(); rec.record(step, x, x); opt.step()
    fast = hindsight(tmp_path / 'r', [2], progress=False).set_index('scope')
    import ntaylor_nb.hindsight_lsq as hl
    gen = hindsight_generic(net, tmp_path / 'r', [2], progress=False).set_index('scope')  # (its layer scope: 2,048 rows a round on 1,088 variables, within its own budget)
    with mock.patch.object(hl, 'ROWS_WORK', 0): from_q = hindsight(tmp_path / 'r', [2], progress=False).set_index('scope')
    r = RegretRecording(tmp_path / 'r'); rounds = rounds_of(r, [k for k, _ in net.named_parameters()])
    def rows(scope):  # the explicit affine maps' rows (sample, output) and right-hand sides over both rounds, each round's mean weighted in
        maps = affine_maps(net, r, Scope.parse(scope), *rounds)
        return (np.concatenate([m[1] / np.sqrt(m[1].shape[0] * m[1].shape[1]) for m in maps]),
                np.concatenate([(m[2].reshape(len(m[2]), -1) - m[0]) / np.sqrt(m[0].size) for m in maps]))
    def minimum(M, b, outputs):  # min_v |M v - b|^2 (halved: a round's average) in 50 digits; each output moves its own weights, all on the same rows
        cols = [np.flatnonzero(np.abs(M[:, o, :]).sum(0)) for o in outputs]
        A = M[:, outputs[0], cols[0]]; assert all(np.allclose(M[:, o, c], A, rtol=1e-12, atol=0) for o, c in zip(outputs, cols))  # (to the maps' rounding)
        rest = np.delete(b, outputs, axis=1)  # the outputs these weights do not move: their squares as they are
        return float((exact_min(A, b[:, outputs]) + mpmath.fsum(mpmath.mpf(float(t)) ** 2 for t in rest.ravel())) / 2)
    ref = {'layer:6': minimum(*rows('layer:6'), list(range(64)))} | {f'neuron:6:{o}': minimum(*rows(f'neuron:6:{o}'), [o]) for o in (25, 41, 49)}
    for s, v in ref.items():
        for t in (fast, gen):
            assert abs(t.loc[s].taylor_optimum - v) <= t.loc[s].optimum_gap and abs(t.loc[s].taylor_optimum - v) < 1e-9 * v, (s, t.loc[s], v)
        assert from_q.loc[s].taylor_optimum - v > 1e-7 * v and not from_q.loc[s].certified  # Q alone: too high, as its gap says
    assert fast.loc[[f'neuron:6:{o}' for o in (25, 41, 49)]].certified.all()  # from the rows: certified (the layer's gap, 2.4e-9 a round, is not)
    assert from_q.loc['layer:6'].taylor_optimum - ref['layer:6'] > 0.04 * ref['layer:6']


def test_mse_hidden_layer_rows_against_50_digits():
    """A hidden layer's direct solves from the rows, on inputs collinear to 1e-9: S_b = J_b'J_b (not the identity) with one unit
    dead throughout (S_b's row and column 0 there) and one inactive on some samples, against 50 digits on rows made from J_b itself (not from a factor of S_b).
    With a budget for one of the prefix's SVDs but not both, no neuron comes from the rows (a prefix's neurons, one source)."""
    from unittest import mock
    import ntaylor_nb.hindsight as hs
    import ntaylor_nb.hindsight_lsq as hl
    from benchmarks.lsq_gap import exact_min
    g = np.random.default_rng(0)
    n, K, C, p = 24, 5, 4, 3
    x = g.normal(size=(n, K)); x[:, 1] = x[:, 0] + 1e-9 * g.normal(size=n)
    J = g.normal(size=(n, p, C)); J[:, :, 3] = 0; J[:8, :, 2] = 0  # unit 3 dead, unit 2 inactive on a third of the samples
    a, e, s = g.normal(size=(n, C)), g.normal(size=(n, p)), np.full(n, 1 / (n * p))
    d = {'l/x': x, 'l/a': a, 'l/delta': np.einsum('bjc,bj->bc', J, e), 'l/S': np.einsum('bjc,bjd->bcd', J, J), 'e2': (e * e).sum(1)}
    def solve(work=None):
        acc = hs._GNAcc('l', [0, 2, 3], [0, 2, 3], True, False)
        acc.add(d, slice(None), s)
        with mock.patch.object(hl, 'ROWS_WORK', work(acc) if work else hl.ROWS_WORK): return acc.solve(1e-9)
    rows = solve()
    xt = np.concatenate([x, np.ones((n, 1))], 1)
    def ref(A, t): return float(exact_min(A[:, np.abs(A).sum(0) > 0], t))  # min |A v - t|^2 in 50 digits (the columns that are 0 left out)
    w = np.sqrt(s)[:, None]
    # the layer: loss_b = s_b |J_b (V x_b - a_b) + e_b|^2, rows (b, j): sqrt(s_b) J_b[j, :] (x) x_b, right-hand sides sqrt(s_b) (J_b a_b - e_b)
    A = (w[:, :, None, None] * np.einsum('bjc,bi->bjci', J, xt)).reshape(n * p, C * (K + 1))
    t = (w * (np.einsum('bjc,bc->bj', J, a) - e)).reshape(-1)
    expect = {hs.Scope('layer', 'l'): ref(A, t)}
    for u in (0, 2, 3):  # a neuron: only row u of V moves, the other units stay at a_b
        expect[hs.Scope('neuron', 'l', u)] = ref((w[:, :, None] * J[:, :, u, None] * xt[:, None, :]).reshape(n * p, K + 1), (w * (J[:, :, u] * a[:, u, None] - e)).reshape(-1))
    with mock.patch.object(hl, 'ROWS_WORK', 0): from_q = solve()
    for sc, v in expect.items():
        if sc.neuron == 3: assert rows[sc] == from_q[sc] and abs(rows[sc][0] - v) < 1e-15 * v; continue  # dead: Q is empty, resolved
        # from the rows: within the gap (which overstates it 34 to 640 times here) and 1e-7 of the value (4e-9 here): made from S_b and the
        # deltas, as recorded, not from J_b, the rows carry their rounding into the direction at 1e-9
        assert abs(rows[sc][0] - v) <= rows[sc][2] and abs(rows[sc][0] - v) < 1e-7 * v, (sc, rows[sc], v)
        assert from_q[sc][0] - v > 1e-3 * v and from_q[sc][2] < 1e-13  # Q alone: 0.3% to 7% too high, with a gap of rounding only (about 1e-15)
    # one SVD's worth of budget left, two needed (neurons 0 and 2; the dead neuron 3 is resolved: nothing to solve): both from Q
    svd = lambda acc: 4 * (K + 1) ** 2 * min(K + 1, len(acc.rows.parts['neurons'][0].T))
    some = solve(lambda acc: acc.rows.work['neurons'] + 1.5 * svd(acc))
    for u in (0, 2): assert some[hs.Scope('neuron', 'l', u)] == from_q[hs.Scope('neuron', 'l', u)]
