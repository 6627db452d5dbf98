"""The matrix-free solvers for large layer scopes (issue 12, item 2): `solver="newton-cg"` forces them on problems small
enough for the dense solvers, which they must match; a layer scope above MAX_DIRECT, once refused, now solves."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ntaylor_nb.devices as dv
import ntaylor_nb.hindsight as hs
from ntaylor_nb.hindsight import hindsight
from ntaylor_nb.hindsight_generic import hindsight_generic
from ntaylor_nb.regret import RegretRecorder
from ntaylor_nb.solvers import MAX_DIRECT


def autoencoder(K=6): return nn.Sequential(nn.Linear(K, 5), nn.ReLU(), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, K))
def convnet(): return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 3))


def record(make, loss, scopes, path, rounds=12, B=10, K=6, seed=0, **kw):
    "Train `make()` by Adam on Gaussian inputs (random labels for cross-entropy, the inputs for MSE), recording `scopes`."
    torch.manual_seed(seed); model = make().double()
    g = torch.Generator().manual_seed(seed + 1)
    conv = isinstance(model[0], nn.Conv2d)
    X = torch.randn(200, 1, 4, 4, generator=g, dtype=torch.float64) if conv else torch.randn(200, K, generator=g, dtype=torch.float64)
    Y = torch.randint(0, 3, (200,), generator=g) if loss == 'cross_entropy' else X * 0.5
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    with RegretRecorder(model, loss, scopes, path, X[:B], rounds, chunk_size=5, neurons_per_layer=2, **kw) as rec:
        for step in range(rounds):
            i = torch.randint(0, 200, (B,), generator=g)
            out = model(X[i])
            l = F.mse_loss(out, Y[i]) if loss == 'mse' else F.cross_entropy(out, Y[i])
            opt.zero_grad(); l.backward(); rec.maybe(step, X[i], Y[i]); opt.step()
    return model


def rel(a, b): return np.abs(a - b) / np.abs(b)


@pytest.fixture(scope='module')
def mse_rec(tmp_path_factory):
    p = tmp_path_factory.mktemp('mse') / 'rec'
    return record(autoencoder, 'mse', ['layer:0', 'layer:2', 'layer:4', 'layer:6', 'neuron:2:1'], p, store_weights=True), p


@pytest.fixture(scope='module')
def ce_rec(tmp_path_factory):
    p = tmp_path_factory.mktemp('ce') / 'rec'
    return record(convnet, 'cross_entropy', ['layer:0', 'layer:4', 'layer:6', 'neuron:0:1'], p, rounds=16, store_weights=True), p


def test_mse_matrix_free_equals_dense(mse_rec, monkeypatch):
    """The quadratic's CG solve (K-FAC preconditioned; the rows' Gram matrix switched off) against the direct solve, every
    Linear layer scope of a chain, from 7 rounds on (70 samples, 35 variables at most)."""
    _, p = mse_rec
    monkeypatch.setattr(hs, '_DUAL_ROWS', 0)
    dense, free = (hindsight(p, prefixes=[7, 9, 12], progress=False, solver=s) for s in ('newton', 'newton-cg'))
    assert (dense.scope == free.scope).all() and (dense.N == free.N).all()
    assert rel(free.taylor_optimum.values, dense.taylor_optimum.values).max() < 1e-9
    lay = free.kind == 'layer'
    hidden = lay & (free.layer != '6')  # the output layer (S = I) keeps its exact per-unit solve
    assert (free[hidden].optimum_gap > 0).all()  # CG ran (not the rows' Gram matrix)
    assert (free[hidden].optimum_gap <= 1e-9).all() and free.certified.all()  # the stop rule: 1e-9 a round ...
    assert (free[hidden].optimum_gap > 1e-9 / 6).any()  # ... not 1e-9 of the summed sample weights (N / p_L), as it was
    d, scale = (free.taylor_optimum - dense.taylor_optimum).values, 1e-13 * np.abs(dense.taylor_optimum.values)
    assert (d >= -scale).all()  # CG's value is one attained: never below the minimum
    assert (d[hidden] <= free[hidden].optimum_gap.values + scale[hidden]).all()  # its gap (a window of half its steps) overstates the distance
    assert (free[~hidden].optimum_gap < 1e-14).all()  # direct solves: their gap is rounding only here


def test_ce_matrix_free_equals_dense(ce_rec):
    "Newton-CG (Conv2d: Jacobi-preconditioned; Linear: K-FAC) against batched Newton with formed Hessians."
    _, p = ce_rec
    dense, free = (hindsight(p, prefixes=[4, 16], progress=False, solver=s) for s in ('newton', 'newton-cg'))
    lay = (free.kind == 'layer').values
    assert set(free[lay].layer) == {'0', '4', '6'}
    assert (free.optimum_gap <= 1e-9).all() and (dense.optimum_gap <= 1e-9).all()
    ok = lay & (dense.taylor_optimum.values > 1e-3)  # not separable: a finite minimum that both reach
    assert ok.sum() >= 4
    assert rel(free.taylor_optimum.values[ok], dense.taylor_optimum.values[ok]).max() < 1e-8
    assert (free.taylor_optimum.values[~lay] == dense.taylor_optimum.values[~lay]).all()  # neuron scopes: the same dense path


@pytest.mark.parametrize('which', ['mse', 'ce'])
def test_matrix_free_against_generic(which, mse_rec, ce_rec):
    "Against hindsight_generic (torch.func Jacobians of the model from stored weights; L-BFGS for cross-entropy)."
    model, p = mse_rec if which == 'mse' else ce_rec
    scopes = ['layer:0', 'layer:2', 'layer:4'] if which == 'mse' else ['layer:0', 'layer:4']
    pre = [3, 12] if which == 'mse' else [4, 16]
    free = hindsight(p, prefixes=pre, scopes=scopes, progress=False, solver='newton-cg')
    gen = hindsight_generic(model, p, prefixes=pre, scopes=scopes, progress=False)
    free, gen = free.set_index(['scope', 'N']).sort_index(), gen.set_index(['scope', 'N']).sort_index()
    assert rel(free.taylor_optimum.values, gen.taylor_optimum.values).max() < 1e-6


def test_mse_dual_equals_dense(mse_rec):
    """The rows' Gram matrix (the default while rows, samples x rank, are at most _DUAL_ROWS) against the direct solve, also
    with fewer samples than variables (1 and 2 rounds: 10 and 20 samples against 35 variables, rank 3 a sample at most:
    the quadratic is singular) and with more rows than variables (the Gram matrix singular, solved by its eigendecomposition,
    whose gap is the rounding of its eigenvectors only: no eigenvalue here lies near its rounding)."""
    _, p = mse_rec
    pre = [1, 2, 3, 7, 12]
    dense, free = (hindsight(p, prefixes=pre, progress=False, solver=s) for s in ('newton', 'newton-cg'))
    assert (dense.scope == free.scope).all() and (dense.N == free.N).all()
    assert rel(free.taylor_optimum.values, dense.taylor_optimum.values).max() < 1e-9
    assert (free.optimum_gap < 1e-12).all() and free.certified.all()
    lay = free[(free.kind == 'layer') & (free.scope != 'layer:6')]  # the matrix-free layer scopes (the output layer's is not)
    assert (lay.optimum_gap == 0).any() and (lay.optimum_gap > 0).any()  # the Cholesky path (exact), and the eigendecomposition's


@pytest.mark.parametrize('seed', [1, 2, 3])
def test_mse_dual_certified_where_rows_depend(seed, tmp_path):
    "Longer runs, where the Gram matrix is singular at most prefixes: values equal to the direct solve, and every solve certified (exactly zero eigenvalues, which the eigensolver returns as +-1e-16 of the largest, are not mistaken for undecidable ones)."
    record(autoencoder, 'mse', ['layer:0', 'layer:2', 'layer:4'], tmp_path / 'rec', rounds=24, seed=seed)
    pre = [3, 6, 12, 24]
    dense, free = (hindsight(tmp_path / 'rec', prefixes=pre, progress=False, solver=s) for s in ('newton', 'newton-cg'))
    assert rel(free.taylor_optimum.values, dense.taylor_optimum.values).max() < 1e-9
    assert free.certified.all(), free[['scope', 'N', 'taylor_optimum', 'optimum_gap']]


def test_mse_dual_then_cg(mse_rec, monkeypatch):
    "The Gram path for the first prefix (at most 40 rows), then CG warm-started from its minimiser: equal to the direct solve and to a cold CG."
    _, p = mse_rec
    monkeypatch.setattr(hs, '_DUAL_ROWS', 40)
    sc = ['layer:0']  # 35 variables: 1 round (10 samples, rank <= 3) gives at most 30 rows, fewer than the variables
    dense = hindsight(p, prefixes=[1, 5, 12], scopes=sc, progress=False, solver='newton')
    warm = hindsight(p, prefixes=[1, 5, 12], scopes=sc, progress=False, solver='newton-cg')
    assert (warm[warm.N == 1].optimum_gap == 0).all() and (warm[warm.N > 1].optimum_gap > 0).all()  # 1 round: <= 30 rows, Gram; then CG
    assert rel(warm.taylor_optimum.values, dense.taylor_optimum.values).max() < 1e-9
    monkeypatch.setattr(hs, '_DUAL_ROWS', 0)
    cold = hindsight(p, prefixes=[12], scopes=sc, progress=False, solver='newton-cg')
    assert rel(warm[warm.N == 12].taylor_optimum.values, cold.taylor_optimum.values).max() < 1e-9


def test_rank_factors_kept_compact(mse_rec):
    "A matrix-free layer scope keeps x_b (float32 when exact) and rank factors L_b of at most the bottleneck's width (3), not S_b (5 x 5)."
    _, p = mse_rec
    rec = hs.RegretRecording(p)
    acc = hs._accumulators(rec.manifest, [hs.Scope.parse('layer:0')], 'cpu', 'newton-cg')[0]
    for d in rec.chunks():
        d, s = hs._with_weights(d, rec.manifest)
        hs._accumulate([acc], rec.manifest, d, 0, len(d['B']), np.concatenate([[0], np.cumsum(d['B'])]), s)
    X, L, r = hs._blocks(acc.kept)[0]
    assert L.shape[1:] == (5, 3) and r.shape[1] == 3 and X.dtype == torch.float64  # this recording is float64: kept so
    Q = torch.einsum('nck,nk,nj->cj', L, r, X)
    assert torch.allclose(Q, acc.st['q'], rtol=1e-10, atol=1e-12)  # q = sum_b L_b r_b x_b^T


@pytest.mark.parametrize('which', ['mse', 'ce'])
def test_warm_start_equals_cold(which, mse_rec, ce_rec):
    "Nested prefixes warm-start CG from the previous minimiser: the last prefix's value equals a cold solve of it alone."
    _, p = mse_rec if which == 'mse' else ce_rec
    R = 12 if which == 'mse' else 16
    warm = hindsight(p, prefixes=[1, 2, 5, R], progress=False, solver='newton-cg')
    cold = hindsight(p, prefixes=[R], progress=False, solver='newton-cg')
    w, c = warm[warm.N == R], cold
    assert (w.scope.values == c.scope.values).all()
    assert rel(w.taylor_optimum.values, c.taylor_optimum.values).max() < (1e-9 if which == "mse" else 1e-8)  # CE: Newton stops within 1e-9 per round


def test_large_layer_scope_solves(tmp_path, monkeypatch):
    "A layer scope above MAX_DIRECT (161 x 50 = 8,050 variables), refused before, is solved matrix-free by the default solver;"
    "the same recording with the limit raised takes the direct solve (a 8,050^2 pivoted Cholesky): the two agree."
    K = 160
    make = lambda: nn.Sequential(nn.Linear(K, 50), nn.ReLU(), nn.Linear(50, 3), nn.ReLU(), nn.Linear(3, K))
    record(make, 'mse', ['layer:0'], tmp_path / 'rec', rounds=6, B=8, K=K)
    assert 50 * (K + 1) > MAX_DIRECT
    free = hindsight(tmp_path / 'rec', prefixes=[2, 6], progress=False)  # the default solver: matrix-free above MAX_DIRECT
    assert (free.optimum_gap == 0).all()  # 48 samples, rank <= 3: at most 144 rows, through their Gram matrix
    monkeypatch.setattr(hs, 'MAX_DIRECT', 10 ** 5)
    dense = hindsight(tmp_path / 'rec', prefixes=[2, 6], progress=False)
    assert dense.certified.all() and dense.optimum_gap.max() < 1e-15  # (pivots near rounding may add a little: 1e-19 a round here)
    assert rel(free.taylor_optimum.values, dense.taylor_optimum.values).max() < 1e-9


def test_device_hessian_equals_direct(mse_rec, monkeypatch):
    """The Hessian accumulated on the device (a GPU's path for large layer scopes, switched on here for the CPU): it equals the
    direct path's Hessian; after the rows' Gram matrix its Cholesky solve equals the direct solve; where it is singular
    (fewer rows than variables), CG takes over as without it."""
    _, p = mse_rec
    monkeypatch.setattr(hs, '_DEVICE_DENSE', ('cpu', 'cuda'))
    rec = hs.RegretRecording(p)
    on, off = (hs._accumulators(rec.manifest, [hs.Scope.parse('layer:0')], 'cpu', s)[0] for s in ('newton-cg', 'newton'))
    for d in rec.chunks():
        d, s = hs._with_weights(d, rec.manifest)
        hs._accumulate([on, off], rec.manifest, d, 0, len(d['B']), np.concatenate([[0], np.cumsum(d['B'])]), s)
    assert on.free and not off.free and torch.allclose(on.dense, off.st['Q'], rtol=1e-12, atol=0)
    pre = [1, 2, 3, 7, 12]
    direct = hindsight(p, prefixes=pre, progress=False, solver='newton')
    both = hindsight(p, prefixes=pre, progress=False, solver='newton-cg')  # Gram while the rows are at most the variables, then the Hessian
    assert rel(both.taylor_optimum.values, direct.taylor_optimum.values).max() < 1e-9 and both.certified.all()
    monkeypatch.setattr(hs, '_DEVICE_DUAL_ROWS', 0)
    paths, dense_min = [], hs._dense_min
    def spy(*a, **k):  # which way each solve went: the reduced Hessian's factor, or (singular) its eigendecomposition
        paths.append('factor' if dense_min(*a, eig=False) is not None else 'eigen'); return dense_min(*a, **k)
    monkeypatch.setattr(hs, '_dense_min', spy)
    dense = hindsight(p, prefixes=pre, progress=False, solver='newton-cg')  # the Hessian at every prefix
    lay = (dense.kind == 'layer').values
    assert dense.grad_norm.values[lay].tolist() == [] or np.isnan(dense.grad_norm.values[lay]).all()  # never CG (it reports a gradient norm)
    assert 'eigen' in paths and 'factor' in paths, paths  # the first rounds: singular even on the blocks' ranges
    assert rel(dense.taylor_optimum.values, direct.taylor_optimum.values).max() < 1e-10
    assert (dense.optimum_gap.values[lay] < 1e-12).all()  # the rounding of the value V attains only
    monkeypatch.setattr(hs, '_dense_min', lambda *a, **k: dense_min(*a, **dict(k, eig=False)))  # without it: CG where singular
    cgrun = hindsight(p, prefixes=pre, progress=False, solver='newton-cg')
    cg = lay & cgrun.grad_norm.notna().values
    assert cg.sum() >= 1 and (cgrun.N.values[cg] <= 3).all(), cgrun[lay][['scope', 'N', 'optimum_gap']]
    assert rel(cgrun.taylor_optimum.values, direct.taylor_optimum.values).max() < 1e-8


def _near_dependent_units(scale, seed=3, m=12):
    """Twelve rows, two units of three inputs that almost always reach the loss together (each row's l is a multiple of
    (1, 1 + scale e), e standard normal): the Hessian's smallest eigenvalue is about scale^2 / 10 of its largest. The
    packed Hessian's arguments for `_dense_min`, Q, q, c, and the exact minimum of these float64 numbers (mpmath, 50 digits)."""
    import mpmath
    from ntaylor_nb.solvers import _tri
    g = np.random.default_rng(seed)
    rows = [(np.array([1.0, 1.0 + scale * g.normal()]) * g.normal(), g.normal(size=3), g.normal()) for _ in range(m)]
    A = np.array([np.kron(l, x) for l, x, _ in rows]); r = np.array([t for *_, t in rows])
    Q, q, c = A.T @ A, A.T @ r, float(r @ r)
    Q4 = Q.reshape(2, 3, 2, 3)
    assert min(np.linalg.eigvalsh(Q4[a, :, a, :]).min() for a in (0, 1)) > 1e-2  # each unit's block regular: all kept
    (iuS, idxS), (iuX, idxX) = _tri(2), _tri(3)
    Qp = torch.tensor([[Q4[iuS[0][k], iuX[0][j], iuS[1][k], iuX[1][j]] for j in range(len(iuX[0]))] for k in range(len(iuS[0]))])
    mpmath.mp.dps = 50
    best = float(c - (mpmath.matrix(q.tolist()).T * mpmath.lu_solve(mpmath.matrix(Q.tolist()), mpmath.matrix(q.tolist())))[0])
    return (Qp, idxS, idxX, torch.from_numpy(q.reshape(2, 3)), c), Q, q, best


def test_device_hessian_on_an_ill_conditioned_factor():
    """Smallest eigenvalue 1.2e-13 of the largest: the reduced Hessian's Cholesky factor holds and passes its pivot test, but
    solves to kappa eps only, and the value V attains cannot be summed better than eps |V|'|Q||V| (V is large along the
    smallest eigenvector). The minimiser is refined; the gap holds the factor's Newton decrement and that rounding, and
    covers the distance to the exact minimum (1.1e-3 against 3.3e-5 here; without the rounding, 8e-6: not covered)."""
    args, Q, q, best = _near_dependent_units(3e-6)
    w = np.linalg.eigvalsh(Q); assert 5e-14 < w[0] / w[-1] < 5e-13
    assert hs._dense_min(*args, eig=False) is not None  # the factor's branch
    v, V, gap = hs._dense_min(*args)
    assert abs(v - best) <= gap and abs(v - best) < 1e-3, (v, best, gap)


def test_device_hessian_reports_a_left_out_eigenvector():
    """Smallest eigenvalue 3.2e-15 of the largest, 6 times the eigensolver's resolution (sqrt(6) eps): the factor fails
    its pivot test, and the eigendecomposition leaves that direction out (between eta and 10 eta). What it could still
    gain, (w'g)^2 / lambda, is reported: 0.30 against the distance of the value from the exact minimum, 0.27. An estimate:
    lambda is known to about eta only."""
    args, Q, q, best = _near_dependent_units(5e-7)
    w = np.linalg.eigvalsh(Q); eta = 6 ** 0.5 * np.finfo(float).eps
    assert eta < w[0] / w[-1] <= 10 * eta
    assert hs._dense_min(*args, eig=False) is None  # the factor fails its pivot test
    v, V, gap = hs._dense_min(*args)
    x = V.reshape(-1).numpy()
    assert abs(v - (x @ Q @ x + 2 * q @ x + args[-1])) < 1e-3  # the value V attains (both sums round at eps |V|'|Q||V|, 2e-4 here)
    assert v - best > 0.1 and 0.7 < gap / (v - best) < 1.4, (v, best, gap)  # a good share left on the table, and reported
    assert gap > 1e-9  # not certified


def test_device_hessian_with_units_that_depend_on_each_other():
    """Two units of three inputs that always reach the loss together (every row's l is a multiple of (1, 1)): each diagonal
    block is regular, but (u, -u) is null for the Hessian, so the factor on the blocks' ranges does not hold. The
    eigendecomposition of the reduced Hessian solves it: the least-squares minimum (numpy's lstsq), certified, attained by V."""
    from ntaylor_nb.solvers import _tri
    g = np.random.default_rng(3)
    rows = [(t * np.ones(2), g.normal(size=3), g.normal()) for t in g.normal(size=12)]
    A = np.array([np.kron(l, x) for l, x, _ in rows]); r = np.array([t for *_, t in rows])
    Q4, q = (A.T @ A).reshape(2, 3, 2, 3), (A.T @ r).reshape(2, 3)
    assert np.linalg.matrix_rank(A.T @ A) == 3 and min(np.linalg.eigvalsh(Q4[a, :, a, :]).min() for a in (0, 1)) > 1e-3
    (iuS, idxS), (iuX, idxX) = _tri(2), _tri(3)
    Qp = torch.tensor([[Q4[iuS[0][m], iuX[0][k], iuS[1][m], iuX[1][k]] for k in range(len(iuX[0]))] for m in range(len(iuS[0]))])
    assert hs._dense_min(Qp, idxS, idxX, torch.from_numpy(q), float(r @ r), eig=False) is None
    v, V, gap = hs._dense_min(Qp, idxS, idxX, torch.from_numpy(q), float(r @ r))
    best = float(((A @ np.linalg.lstsq(A, -r, rcond=None)[0] + r) ** 2).sum())
    assert abs(v - best) < 1e-12 * (r @ r) and 0 <= gap < 1e-12 * (r @ r), (v, best, gap)
    assert abs(float(((A @ V.reshape(-1).numpy() + r) ** 2).sum()) - v) < 1e-12 * (r @ r)


def test_device_paths_fit_free_memory(mse_rec, monkeypatch):
    """On a device the Hessian is accumulated only where it fits in `_DEVICE_SHARE` of the free memory (18 P^2 bytes: packed,
    unpacked and factored), the rows' Gram matrix is used only up to the rows whose 40 m^2 bytes fit, and the Hessian's
    factor only where its 16 P^2 bytes fit then; otherwise the paths without them, with the same values."""
    _, p = mse_rec
    monkeypatch.setattr(hs, '_DEVICE_DENSE', ('cpu', 'cuda'))
    rec, P, share = hs.RegretRecording(p), 5 * 7, dv._DEVICE_SHARE  # layer 0 of the small autoencoder: 5 units, 6 inputs and a bias
    free = []  # bytes free at each query (the last one repeats)
    monkeypatch.setattr(dv, '_device_memory', lambda device: (free.pop(0) if len(free) > 1 else free[0], 1e13))
    def acc(nbytes):
        free[:] = [nbytes]
        a = hs._accumulators(rec.manifest, [hs.Scope.parse('layer:0')], 'cpu', 'newton-cg')[0]
        d, s = hs._with_weights(next(rec.chunks()), rec.manifest)
        hs._accumulate([a], rec.manifest, d, 0, 1, np.concatenate([[0], np.cumsum(d['B'])]), s)
        return a
    assert acc(18 * P * P / share - 1).dense is None and acc(18 * P * P / share).dense is not None  # one byte short: no Hessian
    calls, gram, dense, oom = [], hs._dual_min, hs._dense_min, []
    def gram_spy(*z):
        calls.append('gram')
        if oom: raise torch.OutOfMemoryError('CUDA out of memory (a stand-in)')
        return gram(*z)
    monkeypatch.setattr(hs, '_dual_min', gram_spy)
    monkeypatch.setattr(hs, '_dense_min', lambda *z, eig: calls.append('hessian' + '+eig' * eig) or dense(*z, eig=eig))
    pre = [1, 12]  # 20 rows, then 216 (the variables: 35)
    direct = hindsight(p, prefixes=pre, scopes=['layer:0'], progress=False, solver='newton')
    big = 1e12
    for nbytes, want, cg in [([big], ['gram', 'hessian+eig'], [0, 0]),  # room for everything (the eigendecomposition: 32 P^2 bytes)
                             ([big, 16 * P * P / share], ['gram', 'hessian'], [0, 0]),  # G fits up to 22 rows, the factor just fits
                             ([big, 16 * P * P / share - 1], ['gram'], [0, 1]),  # the factor does not fit: CG
                             ([big, 40 * 19.5 ** 2 / share], [], [1, 1]),  # G fits 19 rows only, the factor not at all: CG at both
                             ([18 * P * P / share - 1], ['gram', 'gram'], [0, 0]),  # no Hessian: the CPU's limits (_DUAL_ROWS)
                             ('oom', ['gram', 'hessian+eig', 'hessian+eig'], [0, 0])]:  # G fits, but the device runs out: the Hessian
        oom[:] = [1] if nbytes == 'oom' else []
        free[:], calls[:] = [big] if nbytes == 'oom' else nbytes, []
        got = hindsight(p, prefixes=pre, scopes=['layer:0'], progress=False, solver='newton-cg')
        assert calls == want, (nbytes, calls)
        assert got.grad_norm.notna().tolist() == [bool(c) for c in cg], got  # CG's rows report a gradient norm, the exact paths NaN
        assert rel(got.taylor_optimum.values, direct.taylor_optimum.values).max() < 1e-8


def test_device_hessian_with_a_rarely_active_unit(tmp_path, monkeypatch):
    """A unit active on a few samples only (its bias pushed down) has seen fewer independent inputs than it has weights: the
    Hessian is singular however many rows there are, through that unit's diagonal block alone. The device Hessian's solve
    leaves that block's null space out (exactly: it is null for the whole Hessian) and still solves by a Cholesky factor,
    equal to the direct solve (a pivoted Cholesky) with a gap of rounding only; without that reduction it would fall back to CG."""
    def make():
        net = autoencoder(); net[0].bias.data[0] = -0.9  # unit 0 of layer 0: active on a few samples (its block has rank 4 of 7)
        return net
    record(make, 'mse', ['layer:0'], tmp_path / 'rec', rounds=12)
    monkeypatch.setattr(hs, '_DEVICE_DENSE', ('cpu', 'cuda')); monkeypatch.setattr(hs, '_DEVICE_DUAL_ROWS', 0)
    rec = hs.RegretRecording(tmp_path / 'rec')
    acc = hs._accumulators(rec.manifest, [hs.Scope.parse('layer:0')], 'cpu', 'newton-cg')[0]
    for d in rec.chunks():
        d, s = hs._with_weights(d, rec.manifest)
        hs._accumulate([acc], rec.manifest, d, 0, len(d['B']), np.concatenate([[0], np.cumsum(d['B'])]), s)
    C, K1 = acc.st['q'].shape
    Q = hs._unpack(acc.dense, acc.idxS, acc.idxX).permute(0, 2, 1, 3).reshape(C * K1, C * K1)
    e0 = torch.linalg.eigvalsh(Q.reshape(C, K1, C, K1)[0, :, 0, :])
    assert (e0 < 1e-12 * e0.max()).sum() >= 2, e0  # unit 0 saw too few inputs: its block, and so Q, is singular
    assert torch.linalg.cholesky_ex(Q)[1] != 0 or torch.linalg.eigvalsh(Q)[0] < 1e-12 * Q.diagonal().max()
    direct = hindsight(tmp_path / 'rec', prefixes=[6, 12], progress=False, solver='newton')
    dense = hindsight(tmp_path / 'rec', prefixes=[6, 12], progress=False, solver='newton-cg')
    assert dense.grad_norm.isna().all() and (dense.optimum_gap < 1e-12).all()  # by the Cholesky factor, not CG
    assert rel(dense.taylor_optimum.values, direct.taylor_optimum.values).max() < 1e-9


def test_device_hessian_reports_a_left_out_direction():
    """Three rows, two units of two inputs; unit 0's diagonal block has an eigenvalue at 2e-15 of its largest, between its
    rounding and ten times it: left out. Along it the minimum falls from 0.5 to about 0 (the rows can be fitted exactly);
    the solve must not be certified: its gap is what that direction alone could still gain, (u'g)^2 / lambda = 0.25, from
    the gradient g at the minimiser found without it (the share computed from q instead is 3e-21)."""
    from ntaylor_nb.solvers import _tri
    d = 2e-15 ** 0.5
    rows = [((0., 1.), (-1., 1.), 1.0), ((d, 1.), (-1., 1.), 0.0), ((1., 0.), (1., 1.), 0.3)]  # (l, x, r) a row
    A = np.array([np.kron(l, x) for l, x, _ in rows]); r = np.array([t for *_, t in rows])
    Q4, q = (A.T @ A).reshape(2, 2, 2, 2), (A.T @ r).reshape(2, 2)
    (iuS, idxS), (iuX, idxX) = _tri(2), _tri(2)
    Qp = torch.tensor([[Q4[iuS[0][m], iuX[0][k], iuS[1][m], iuX[1][k]] for k in range(len(iuX[0]))] for m in range(len(iuS[0]))])
    v, V, gap = hs._dense_min(Qp, idxS, idxX, torch.from_numpy(q), float(r @ r))
    inf = float(r @ r - r @ A @ np.linalg.lstsq(A, r, rcond=None)[0])
    assert abs(inf) < 1e-8 and abs(v - 0.5) < 1e-12 and abs(gap - 0.25) < 1e-3 and gap > 1e-9
    assert abs(float(((A @ V.reshape(-1).numpy() + r) ** 2).sum()) - v) < 1e-12  # the value is the one V attains: ||A v + r||^2
    # the same figures by hand (numpy): the minimiser on the blocks' ranges with u left out, its gradient, u's share
    Q, e0, U0 = A.T @ A, *np.linalg.eigh(Q4[0, :, 0, :])
    e1, U1 = np.linalg.eigh(Q4[1, :, 1, :])
    B = np.zeros((4, 2)); B[:2, 0] = U0[:, 1]; B[2:, 1] = U1[:, 1]  # unit 0 without u = U0[:, 0]; unit 1's range (rank 1)
    Vr = B @ np.linalg.solve(B.T @ Q @ B, -B.T @ q.reshape(-1))
    g = Q @ Vr + q.reshape(-1)
    assert abs(v - float(Vr @ Q @ Vr + 2 * q.reshape(-1) @ Vr + r @ r)) < 1e-12
    assert abs(gap - float(U0[:, 0] @ g[:2]) ** 2 / e0[0]) < 1e-6 * gap


def test_newton_cg_sees_nearly_collinear_inputs(tmp_path):
    "Two inputs equal up to 1e-6 (and one exactly equal): K-FAC had dropped the factor's tiny eigen-directions, so CG never moved along them and certified 3.3736 where the minimum is 3.1867 (as the dense Newton on the formed samples finds)."
    import torch.nn.functional as F
    from ntaylor_nb.regret import RegretRecorder
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    g = torch.Generator().manual_seed(1)
    A, z = torch.randn(200, 4, generator=g, dtype=torch.float64), torch.randn(200, generator=g, dtype=torch.float64)
    X, Y = torch.stack([A[:, 0], A[:, 0] + 1e-6 * z, A[:, 1], A[:, 0], A[:, 2], A[:, 3]], 1), torch.randint(0, 3, (200,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with RegretRecorder(model, 'cross_entropy', ['layer:0'], tmp_path / 'r', X[:20], 4, chunk_size=4) as rec:
        for step in range(4):
            i = torch.randint(0, 200, (20,), generator=g); x, y = X[i], Y[i]
            loss = F.cross_entropy(model(x), y); opt.zero_grad(); loss.backward(); rec.maybe(step, x, y); opt.step()
    cg, dense = (hindsight(tmp_path / 'r', [4], progress=False, solver=s).iloc[0] for s in ('newton-cg', 'newton'))
    assert dense.certified and 4 * dense.taylor_optimum == pytest.approx(3.186724, abs=1e-5)
    assert cg.certified and abs(cg.taylor_optimum - dense.taylor_optimum) <= 1e-7 * dense.average_loss, (cg.taylor_optimum, dense.taylor_optimum)
    # and with truly null directions beside it (an input always 0, two units dead on every sample): those stay out, the value the same
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    with torch.no_grad(): model[0].bias[[1, 3]] = -1e3
    X0 = X.clone(); X0[:, 5] = 0
    with RegretRecorder(model, 'cross_entropy', ['layer:0', 'layer:2'], tmp_path / 'z', X0[:20], 4, chunk_size=4) as rec:
        for step in range(4):
            i = torch.randint(0, 200, (20,), generator=g); x, y = X0[i], Y[i]
            loss = F.cross_entropy(model(x), y); opt.zero_grad(); loss.backward(); rec.maybe(step, x, y)
    cg, dense = (hindsight(tmp_path / 'z', [4], progress=False, solver=s).set_index('scope') for s in ('newton-cg', 'newton'))
    assert cg.certified.all() and dense.certified.all()
    assert ((cg.taylor_optimum - dense.taylor_optimum).abs() <= 1e-7 * dense.average_loss).all(), (cg.taylor_optimum, dense.taylor_optimum)


def test_mse_rows_check_solves_from_the_rows():
    """benchmarks/mse_rows.py's reference: the least-squares minimum of a layer scope's rows L_b[:, j] (x) x_b, reduced block by
    block (TSQR) and added to incrementally, against numpy's lstsq on the explicitly stacked rows, on inputs collinear to 1e-8
    (a direction Q = A'A cannot resolve, rows can): the direct solve of Q = A'A is 0.8% too high there, its gap rounding only (the pivot is at rounding)."""
    from benchmarks.mse_rows import RowsMin  # (`python -m pytest` from the repository root, as `make test` runs it)
    from ntaylor_nb.quadratic import quad_min
    g = np.random.default_rng(0)
    n, K1, C, k = 150, 5, 3, 2
    X = g.normal(size=(n, K1)); X[:, 1] = X[:, 0] + 1e-8 * g.normal(size=n)
    L, r = g.normal(size=(n, C, k)), g.normal(size=(n, k))
    A = np.einsum('bcj,bi->bjci', L, X).reshape(-1, C * K1)
    m = RowsMin(block=16)
    m.add(X[:40], L[:40], r[:40]); m.add(X[40:41], L[40:41], r[40:41])
    part = float(np.sum((A[:82] @ np.linalg.lstsq(A[:82], r[:41].reshape(-1), rcond=1e-13)[0] - r[:41].reshape(-1)) ** 2))
    assert m.minimum() == pytest.approx(part, rel=1e-7)  # (the direction at 1e-8 costs digits either way: 2e-9 apart here)
    m.add(X[41:], L[41:], r[41:])
    y = r.reshape(-1)
    truth = float(np.sum((A @ np.linalg.lstsq(A, y, rcond=1e-13)[0] - y) ** 2))
    assert m.minimum() == pytest.approx(truth, rel=1e-7) and m.rr == pytest.approx(y @ y, rel=1e-14)
    v, gap = quad_min(A.T @ A, -A.T @ y, y @ y, gap=True)
    # the limit documented in ntaylor_nb.quadratic, pinned: the statistics lost the direction, and the gap is rounding only (lifting the limit fails this: update both)
    assert v - truth > 5e-3 * truth and gap < 1e-9 * truth


def test_lsq_gap_reference_and_problems():
    "benchmarks/lsq_gap.py's 50-digit reference against a closed form (rows along coordinate axes), and its problems' collinearity."
    from benchmarks.lsq_gap import exact_min, problems  # (`python -m pytest` from the repository root, as `make test` runs it)
    A, Y = np.array([[2.0, 0], [0, 3], [0, 0]]), np.array([[1.0, 4], [2, 5], [3, 6]])
    assert float(exact_min(A, Y, 100.0)) == 100.0 - (1 + 16 + 4 + 25)  # all of Y but its third row lies in the rows' range
    ps = list(problems(1))
    assert [(m, P) for m, P, *_ in ps[::4]] == [(40, 6), (64, 17), (150, 51)] and len(ps) == 12
    for m, P, delta, A, Y in ps:  # columns 0 and 1 collinear to about delta (float32 rounding aside), and an independent rest
        d = A[:, 1] - A[:, 0]; assert np.linalg.norm(d) <= 10 * delta * np.sqrt(m) + 1e-6 * np.linalg.norm(A[:, 0]) and Y.shape == (m, 2)
