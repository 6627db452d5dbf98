"""TF1's RMSProp and Adam (ntaylor_nb.optimizers) step by step against a float64 NumPy transcription of TF1's documented
update rules, written here independently; and in a training run (registered in OPTIMIZERS, checkpoints resume)."""
import itertools
import math

import numpy as np
import pytest
import torch

from ntaylor_nb.optimizers import AdamTF, RMSpropTF
from ntaylor_nb.train import OPTIMIZERS, RunConfig, train_run
from ntaylor_nb.tune import LR_GRID


def tf1_rmsprop(w, grads, lr, decay=0.9, momentum=0.0, epsilon=1e-10, centered=False):
    """tf.compat.v1.train.RMSPropOptimizer as its documentation states the update: the iterates. (TF's C++ kernel computes
    ms + (g^2 - ms) * (1 - decay), equal in exact arithmetic but cancelling badly when decay is 0; the documented form is used.)"""
    w = w.copy(); ms = np.ones_like(w); mg = np.zeros_like(w); mom = np.zeros_like(w); out = []
    for g in grads:
        ms = decay * ms + (1 - decay) * g ** 2
        denom = ms + epsilon
        if centered:
            mg = decay * mg + (1 - decay) * g
            denom = ms - mg * mg + epsilon
        mom = mom * momentum + lr * g / np.sqrt(denom)
        w = w - mom; out.append(w)
    return np.array(out)


def tf1_adam(w, grads, lr, beta1=0.9, beta2=0.999, epsilon=1e-8):
    "tf.compat.v1.train.AdamOptimizer: the iterates."
    w = w.copy(); m = np.zeros_like(w); v = np.zeros_like(w); out = []
    b1p, b2p = 1.0, 1.0  # TF1's beta1_power / beta2_power accumulators
    for g in grads:
        b1p, b2p = b1p * beta1, b2p * beta2
        lr_t = lr * np.sqrt(1 - b2p) / (1 - b1p)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        w = w - lr_t * m / (np.sqrt(v) + epsilon); out.append(w)
    return np.array(out)


def iterates(cls, w0, grads, **kw):
    "The iterates of a torch optimizer on two parameter tensors (w0 split) fed the given gradients, in float64."
    ps = [torch.tensor(w0[:3], requires_grad=True), torch.tensor(w0[3:].reshape(2, 2), requires_grad=True)]
    opt, out = cls(ps, **kw), []
    for g in grads:
        ps[0].grad, ps[1].grad = torch.tensor(g[:3]), torch.tensor(g[3:].reshape(2, 2))
        opt.step(); out.append(np.concatenate([p.detach().numpy().ravel() for p in ps]))
    return np.array(out)


def gradients(seed, n=300, scale=1.0):
    "Random gradients of mixed sizes (some tiny, where epsilon matters), and a stretch of zeros."
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(n, 7)) * scale * 10.0 ** rng.uniform(-6, 1, size=(n, 7))
    g[100:110] = 0.0
    return g


RMS_HP = [dict(lr=lr, decay=d, momentum=mu, epsilon=e, centered=c)
          for (lr, d, mu, e, c) in [(1e-3, 0.9, 0.0, 1e-10, False), (0.05, 0.9, 0.9, 1e-10, False), (0.01, 0.99, 0.5, 1e-6, False),
                                    (0.01, 0.9, 0.0, 1e-10, True), (3e-3, 0.5, 0.95, 1e-3, True), (0.1, 0.0, 0.0, 1e-12, False)]]


@pytest.mark.parametrize('hp', RMS_HP, ids=[str(i) for i in range(len(RMS_HP))])
@pytest.mark.parametrize('seed', [0, 1])
def test_rmsprop_tf_matches_tf1_rules(hp, seed):
    w0, g = np.random.default_rng(100 + seed).normal(size=7), gradients(seed)
    np.testing.assert_allclose(iterates(RMSpropTF, w0, g, **hp), tf1_rmsprop(w0, g, **hp), rtol=1e-12, atol=1e-12)


ADAM_HP = [dict(lr=lr, beta1=b1, beta2=b2, epsilon=e) for lr, b1, b2, e in
           [(1e-3, 0.9, 0.999, 1e-8), (0.05, 0.0, 0.9, 1e-8), (0.01, 0.95, 0.99, 1.0), (0.02, 0.5, 0.999, 0.0)]]


@pytest.mark.parametrize('hp', ADAM_HP, ids=[str(i) for i in range(len(ADAM_HP))])
@pytest.mark.parametrize('seed', [0, 1])
def test_adam_tf_matches_tf1_rules(hp, seed):
    w0, g = np.random.default_rng(100 + seed).normal(size=7), gradients(seed)
    if hp['epsilon'] == 0: g[100:110] = 1e-3  # zero gradients would give 0/0 with epsilon 0
    np.testing.assert_allclose(iterates(AdamTF, w0, g, **hp), tf1_adam(w0, g, **hp), rtol=1e-12, atol=1e-12)


def test_defaults_are_tf1s_and_differ_from_torch():
    w0, g = np.random.default_rng(5).normal(size=7), gradients(5, n=50, scale=1e-3)
    np.testing.assert_allclose(iterates(RMSpropTF, w0, g, lr=1e-3), tf1_rmsprop(w0, g, lr=1e-3), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(iterates(AdamTF, w0, g), tf1_adam(w0, g, lr=1e-3), rtol=1e-12, atol=1e-12)
    torch_rms = iterates(torch.optim.RMSprop, w0, g, lr=1e-3)
    assert np.abs(torch_rms - tf1_rmsprop(w0, g, lr=1e-3)).max() > 1e-3  # PyTorch's RMSprop is a different optimizer
    assert np.abs(iterates(torch.optim.Adam, w0, g, lr=1e-3) - tf1_adam(w0, g, lr=1e-3)).max() > 1e-6


@pytest.mark.parametrize('cls,kw', [(RMSpropTF, dict(lr=0.01, momentum=0.9, centered=True)), (AdamTF, dict(lr=0.01))])
def test_state_dict_resumes_bit_identical(cls, kw):
    w0, g = np.random.default_rng(7).normal(size=7), gradients(7, n=40)
    whole = iterates(cls, w0, g, **kw)
    ps = [torch.tensor(w0[:3], requires_grad=True), torch.tensor(w0[3:].reshape(2, 2), requires_grad=True)]
    opt = cls(ps, **kw)
    for i, gi in enumerate(g):
        if i == 20:  # a fresh optimizer from the saved state, as a resumed run builds it
            state = opt.state_dict(); opt = cls(ps, **kw); opt.load_state_dict(state)
        ps[0].grad, ps[1].grad = torch.tensor(gi[:3]), torch.tensor(gi[3:].reshape(2, 2)); opt.step()
    np.testing.assert_array_equal(np.concatenate([p.detach().numpy().ravel() for p in ps]), whole[-1])


def test_registered_for_training_runs(tmp_path):
    assert OPTIMIZERS['rmsprop_tf'] is RMSpropTF and OPTIMIZERS['adam_tf'] is AdamTF
    for name in ('rmsprop_tf', 'adam_tf'):
        assert name in LR_GRID
        run = train_run(RunConfig(optimizer=name, lr=1e-3, rounds=5, scopes=None, probe_size=0), tmp_path / name, progress=False)
        assert (run / 'done.json').exists()
    with pytest.raises(ValueError, match='allowed: sgd, rmsprop, adam, rmsprop_tf, adam_tf'):
        RunConfig(optimizer='lion').validate()
