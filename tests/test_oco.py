"""Cross-checks of ntaylor_nb.learners and ntaylor_nb.oco: torch.optim trajectories, Zinkevich's bound, independent solvers, the counterexample."""
import numpy as np
import pytest
import scipy.optimize as so
from hypothesis import given, settings, strategies as st

from ntaylor_nb.growth import bootstrap_exponent
from ntaylor_nb.learners import Ball, Box, Learner, make_learner, torch_trajectory
from ntaylor_nb.oco import (Environment, LeastSquares, LinearLosses, LogisticDigits, ReddiCounterexample, counterexample,
                            ogd_bound, play, run_grid)

CASES = [('sgd', {}), ('sgd', dict(lr=0.05, momentum=0.9)), ('sgd', dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
         ('sgd', dict(lr=0.05, momentum=0.5, dampening=0.3)), ('adagrad', {}), ('adagrad', dict(lr=0.3, lr_decay=0.05, initial_accumulator_value=0.1)),
         ('rmsprop', {}), ('rmsprop', dict(lr=0.01, alpha=0.9, centered=True)), ('rmsprop', dict(lr=0.01, momentum=0.8, weight_decay=0.1)),
         ('adam', {}), ('adam', dict(lr=0.02, betas=(0.5, 0.9))), ('amsgrad', dict(lr=0.02)), ('adam', dict(lr=0.3, schedule='sqrt'))]


@pytest.mark.parametrize('name,hp', CASES, ids=[f'{n}-{i}' for i, (n, _) in enumerate(CASES)])
def test_trajectories_match_torch_optim(name, hp):
    rng = np.random.default_rng(1)
    A = rng.normal(size=(6, 6)); A = A @ A.T / 6; b = rng.normal(size=6)
    grad = lambda t, x: A @ x - b + 0.3 * np.cos(t) * x
    L, xs = make_learner(name, np.full(6, 0.7), **hp), []
    for t in range(1, 201): xs.append(L.predict()); L.update(grad(t, xs[-1]))
    np.testing.assert_allclose(np.array(xs), torch_trajectory(name, np.full(6, 0.7), grad, 200, **hp), rtol=0, atol=1e-10)


class QuadLinear(Environment):
    "f_t(x) = g_t.x + (c_t/2)|x - z_t|^2 on a ball: convex, bounded gradients, closed-form hindsight."
    def __init__(self, dim, seq, R):
        super().__init__(dim); self.seq, self.domain, self.R = seq, Ball(R), R
    def round(self, t, x):
        g, c, z = self.seq[t - 1]
        return float(g @ x + 0.5 * c * np.sum((x - z) ** 2)), g + c * (x - z)
    def value(self, x, N): return sum(g @ x + 0.5 * c * np.sum((x - z) ** 2) for g, c, z in self.seq[:N])
    def hindsight(self, prefixes):
        out = []
        for N in prefixes:
            C = sum(c for _, c, _ in self.seq[:N]); lin = sum(g - c * z for g, c, z in self.seq[:N])
            x = -lin / C if C > 0 else -self.R * lin / max(np.linalg.norm(lin), 1e-300)
            out.append(self.value(self.domain.project(x), N))
        return np.array(out)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(5, 300), st.floats(0.1, 3.0), st.integers(0, 2**16), st.booleans())
def test_ogd_regret_never_exceeds_its_bound(dim, N, R, seed, quadratic):
    rng = np.random.default_rng(seed)
    seq = [(rng.normal(size=dim), rng.uniform(0, 1) if quadratic else 0.0, rng.normal(size=dim)) for _ in range(N)]
    G = max(np.linalg.norm(g) + c * (R + np.linalg.norm(z)) for g, c, z in seq)
    D = 2 * R
    p = play(make_learner('ogd', np.zeros(dim), lr=D / G, schedule='sqrt', domain=Ball(R)), QuadLinear(dim, seq, R), N)
    assert np.all(p.regret <= ogd_bound(p.prefixes, G, D) + 1e-9)
    # the hindsight optimum is a true minimum: no iterate of the run beats it on its prefix
    env = QuadLinear(dim, seq, R)
    assert all(env.value(x, N) >= p.optimum[-1] - 1e-9 for x in p.xs[::max(1, N // 20)])


@pytest.mark.parametrize('name,hp', [('ogd', dict(lr=2.0, schedule='sqrt')), ('adagrad', dict(lr=1.0))])
def test_regret_grows_like_sqrt_N_on_random_linear_losses(name, hp):
    df = run_grid({name: (name, dict(hp, domain=Ball(1.0)))}, lambda s: LinearLosses(5, seed=s), 4000, seeds=range(12))
    R = df.pivot(index='seed', columns='N', values='regret')
    est, lo, hi = bootstrap_exponent(R.columns.values, R.values, lo=30, n_boot=300)
    assert 0.4 <= est <= 0.6, (est, lo, hi)


def test_counterexample_adam_fails_amsgrad_converges():
    ce = counterexample(N=20000)
    adam, ams = (ce[ce.learner == n].set_index('N') for n in ('adam', 'amsgrad'))
    Ns = [1000, 5000, 20000]
    Ns = [adam.index[np.abs(adam.index - n).argmin()] for n in Ns]
    assert all(adam.avg_regret[n] > 0.5 for n in Ns), adam.avg_regret[Ns]   # stays above a positive constant
    assert adam.x[Ns[-1]] > 0.99                                             # at the worst point
    assert list(ams.avg_regret[Ns]) == sorted(ams.avg_regret[Ns], reverse=True) and ams.avg_regret[Ns[-1]] < 0.02
    # independent check of the closed-form hindsight value: sum of the gradients at x = -1
    env = ReddiCounterexample(3.0)
    for t in range(1, 101): env.round(t, np.zeros(1))
    assert env.hindsight([100])[0] == pytest.approx(-abs(sum(3.0 if t % 3 == 1 else -1.0 for t in range(1, 101))))


def scipy_min(fun, x0, ball=None, box=None):
    cons = [] if ball is None else [{'type': 'ineq', 'fun': lambda x: ball ** 2 - x @ x}]
    bounds = None if box is None else [box] * len(x0)
    r = so.minimize(fun, x0, method='SLSQP', constraints=cons, bounds=bounds, options=dict(ftol=1e-14, maxiter=1000))
    return r.fun


@pytest.mark.parametrize('domain', [Ball(1.5), Box(-0.5, 2.0)], ids=['ball', 'box'])
def test_linear_hindsight_matches_scipy(domain):
    env = LinearLosses(4, domain=domain, seed=3)
    for t in range(1, 51): env.round(t, np.zeros(4))
    ours = env.hindsight([10, 50])
    G = np.array(env.gs)
    for N, v in zip([10, 50], ours):
        S = G[:N].sum(0)
        ref = scipy_min(lambda x: S @ x, np.zeros(4), ball=domain.radius if isinstance(domain, Ball) else None,
                        box=(domain.lo, domain.hi) if isinstance(domain, Box) else None)
        assert v == pytest.approx(ref, rel=1e-7, abs=1e-9)


def test_least_squares_hindsight_matches_scipy():
    env = LeastSquares(5, seed=2)
    for t in range(1, 101): env.round(t, np.zeros(5))
    A, b = np.array(env.a), np.array(env.b)
    for N, v in zip([3, 20, 100], env.hindsight([3, 20, 100])):
        r = so.minimize(lambda w: 0.5 * np.sum((A[:N] @ w - b[:N]) ** 2), np.zeros(5), jac=lambda w: A[:N].T @ (A[:N] @ w - b[:N]),
                        method='BFGS', options=dict(gtol=1e-12))
        assert v == pytest.approx(r.fun, rel=1e-8, abs=1e-10)


def test_logistic_hindsight_matches_sklearn():
    from sklearn.linear_model import LogisticRegression
    env = LogisticDigits(lam=1e-2, seed=0)
    for t in range(1, 301): env.round(t, np.zeros(env.dim))
    for N, v in zip([50, 300], env.hindsight([50, 300])):
        X, y, lam = env.X[:N], env.y[:N], env.lam
        clf = LogisticRegression(C=1 / (lam * N), fit_intercept=False, tol=1e-12, max_iter=100000).fit(X, y)
        w = clf.coef_.ravel()
        ref = np.logaddexp(0, -y * (X @ w)).sum() + 0.5 * lam * N * w @ w
        assert v == pytest.approx(ref, rel=1e-6)
        assert v <= ref + 1e-9  # ours is at least as good as the independent solver
    assert max(env.certificates) < 1e-6


def test_playing_the_hindsight_optimum_has_zero_regret():
    class Fixed(Learner):
        name = 'fixed'
        def _step(self, g, lr): return self.x
    env = LeastSquares(3, seed=5)
    p = play(Fixed(np.zeros(3), 1.0), env, 300)
    A, b = np.array(env.a), np.array(env.b)
    w = np.linalg.lstsq(A, b, rcond=None)[0]
    q = play(Fixed(w, 1.0), LeastSquares(3, seed=5), 300)
    assert q.regret[-1] == pytest.approx(0, abs=1e-9)
    assert p.regret[-1] > 1



def test_bad_inputs():
    with pytest.raises(ValueError, match='allowed: ogd, sgd, adagrad, rmsprop, adam, amsgrad'): make_learner('lbfgs', np.zeros(2))
    with pytest.raises(ValueError, match='lr must be a positive number'): make_learner('sgd', np.zeros(2), lr=-1.0)
    with pytest.raises(ValueError, match="schedule must be 'constant' or 'sqrt'"): make_learner('sgd', np.zeros(2), schedule='cosine')
    with pytest.raises(ValueError, match='gradient has 3 coordinates, the learner has 2'): make_learner('adagrad', np.zeros(2)).update(np.ones(3))
    with pytest.raises(ValueError, match='learner has dimension 2, environment 4'): play(make_learner('sgd', np.zeros(2)), LinearLosses(4), 10)
    with pytest.raises(ValueError, match='betas must lie in'): make_learner('adam', np.zeros(2), betas=(0.9, 1.0))
    with pytest.raises(ValueError, match='C > 2'): ReddiCounterexample(1.0)
    with pytest.raises(ValueError, match='point has 3 coordinates, expected 4'): LinearLosses(4).round(1, np.zeros(3))
    with pytest.raises(ValueError, match='prefixes must lie in 1..10'): play(make_learner('sgd', np.zeros(4)), LinearLosses(4), 10, prefixes=np.array([0, 5]))


def test_bad_domains_and_a_replayed_environment_are_refused():
    "A domain that is no convex set, an unregularised logistic stream, and an environment played twice (its hindsight would count the first play's rounds)."
    from ntaylor_nb.learners import Ball, Box, make_learner
    from ntaylor_nb.oco import LinearLosses, LogisticDigits, play
    for bad in (lambda: Ball(-1.0), lambda: Ball(0.0), lambda: Box(1.0, -1.0), lambda: Box(0.0, float('inf'))):
        with pytest.raises(ValueError, match='a positive, finite radius|finite bounds with lo < hi'): bad()
    for lam in (0.0, -1e-3):
        with pytest.raises(ValueError, match=f'lam={lam!r}: a positive weight'): LogisticDigits(lam=lam)
    env = LinearLosses(3, domain=Ball(1.0), seed=0)
    first = play(make_learner('ogd', np.zeros(3), lr=0.1, domain=Ball(1.0)), env, 50)
    assert env.played == 50 and np.isfinite(first.regret).all()
    with pytest.raises(ValueError, match='LinearLosses has already revealed 50 rounds to a play'): play(make_learner('ogd', np.zeros(3), lr=0.1, domain=Ball(1.0)), env, 50)
