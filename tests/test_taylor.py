"""Cross-checks of ntaylor_nb.taylor against independent computations (autograd, finite differences, brute force)."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch.func import functional_call

from ntaylor_nb.taylor import (Scope, activation_configuration, clamped_output, current_weights, layer_jacobian,
                               resolve_scope, scope_weights, substitute, taylor_loss, taylor_output)
from problems import PROBLEMS

ids = [p.id for p in PROBLEMS]


def all_scopes(model):
    "Every scope of the model: network, each parameterised layer (with and without bias), two neurons a layer."
    out = ['network', 'network:nobias']
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            out += [f'layer:{name}', f'layer:{name}:nobias', f'neuron:{name}:0', f'neuron:{name}:{m.weight.shape[0] - 1}:nobias']
    return out


def true_loss(model, x, y, P, loss):
    return {'mse': F.mse_loss, 'cross_entropy': F.cross_entropy}[loss](functional_call(model, P, (x,)), y)


@pytest.mark.parametrize('prob', PROBLEMS, ids=ids)
def test_taylor_at_W_is_f_and_gradients_agree(prob):
    model, x, y = prob.build()
    f0 = model(x)
    for s in all_scopes(model):
        Ws = scope_weights(model, s)
        torch.testing.assert_close(taylor_output(model, x, Ws, s), f0, rtol=0, atol=1e-13)
        V = {k: v.clone().requires_grad_() for k, v in Ws.items()}
        gT = torch.autograd.grad(taylor_loss(model, x, y, V, s, prob.loss), list(V.values()))
        P = {k: v.clone().requires_grad_() for k, v in Ws.items()}
        gf = torch.autograd.grad(true_loss(model, x, y, substitute(model, s, P), prob.loss), list(P.values()))
        for a, b in zip(gT, gf): torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize('prob', PROBLEMS, ids=ids)
def test_gradient_against_float64_finite_differences(prob):
    "The Taylor loss's gradient at W, by central differences of the true loss along a random direction."
    model, x, y = prob.build(seed=3)
    Ws = scope_weights(model, 'network')
    D = {k: torch.randn_like(v) for k, v in Ws.items()}
    V = {k: v.clone().requires_grad_() for k, v in Ws.items()}
    g = torch.autograd.grad(taylor_loss(model, x, y, V, 'network', prob.loss), list(V.values()))
    directional = sum((gi * D[k]).sum() for gi, k in zip(g, V)).item()
    h = 1e-6
    L = lambda t: true_loss(model, x, y, {k: Ws[k] + t * D[k] for k in Ws}, prob.loss).item()
    assert directional == pytest.approx((L(h) - L(-h)) / (2 * h), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize('prob', PROBLEMS, ids=ids)
def test_taylor_is_affine_in_V(prob):
    model, x, _ = prob.build(seed=1)
    for s in all_scopes(model):
        Ws = scope_weights(model, s)
        D1 = {k: torch.randn_like(v) for k, v in Ws.items()}
        D2 = {k: torch.randn_like(v) for k, v in Ws.items()}
        T = lambda a, b: taylor_output(model, x, {k: Ws[k] + a * D1[k] + b * D2[k] for k in Ws}, s)
        T0 = T(0, 0)
        torch.testing.assert_close(T(2.5, -1.5) - T0, 2.5 * (T(1, 0) - T0) - 1.5 * (T(0, 1) - T0), rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize('prob', PROBLEMS, ids=ids)
def test_factored_equals_generic_and_materialized_equals_autograd(prob):
    model, x, _ = prob.build(seed=2)
    W = current_weights(model)
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)): continue
        lj = layer_jacobian(model, x, name)
        V = {k: v + 0.3 * torch.randn_like(v) for k, v in scope_weights(model, f'layer:{name}').items()}
        torch.testing.assert_close(lj.taylor({'weight': V[f'{name}.weight'], 'bias': V[f'{name}.bias']}),
                                   taylor_output(model, x, V, f'layer:{name}'), rtol=1e-10, atol=1e-12)
        for a in range(m.weight.shape[0]):
            Vn = {k: v + 0.3 * torch.randn_like(v) for k, v in scope_weights(model, f'neuron:{name}:{a}').items()}
            torch.testing.assert_close(lj.taylor({'weight': Vn[f'{name}.weight'], 'bias': Vn[f'{name}.bias']}, neuron=a),
                                       taylor_output(model, x, Vn, f'neuron:{name}:{a}'), rtol=1e-10, atol=1e-12)
        G = lj.materialize()
        for p in ('weight', 'bias'):
            jac = torch.autograd.functional.jacobian(lambda w: functional_call(model, {**W, f'{name}.{p}': w}, (x,)), W[f'{name}.{p}'])
            torch.testing.assert_close(G[p], jac, rtol=1e-10, atol=1e-13)


def test_forward_and_reverse_mode_jacobians_agree():
    "layer_jacobian picks forward mode for a narrow layer before a wide output; both give autograd's Jacobian."
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 3), nn.ReLU(), nn.Linear(3, 30)).double()
    x = torch.randn(4, 30, dtype=torch.float64)
    for layer in ('0', '2'):  # layer 0: 3 units < 30 outputs (forward); layer 2: 30 units = 30 outputs (reverse)
        lj = layer_jacobian(model, x, layer)
        W = current_weights(model)
        jac = torch.autograd.functional.jacobian(lambda w: functional_call(model, {**W, f'{layer}.weight': w}, (x,)), W[f'{layer}.weight'])
        torch.testing.assert_close(lj.materialize()['weight'], jac, rtol=1e-12, atol=1e-14)


def test_relu_mlp_exact_without_flips_and_clamped_with_flips():
    prob = PROBLEMS[0]
    model, x, _ = prob.build(seed=4, batch=16)
    A0 = activation_configuration(model, x).A
    for layer in ('0', '2', '4'):
        s = f'layer:{layer}'
        Ws = scope_weights(model, s)
        D = {k: torch.randn_like(v) for k, v in Ws.items()}
        seen = set()
        for eps in (1e-8, 1e-4, 1e-2, 0.3, 1.0, 3.0):
            V = {k: Ws[k] + eps * D[k] for k in Ws}
            P = substitute(model, s, V)
            flipped = bool((activation_configuration(model, x, P).A != A0).any())
            T, fV, C = taylor_output(model, x, V, s), functional_call(model, P, (x,)), clamped_output(model, x, V, s)
            torch.testing.assert_close(T, C, rtol=0, atol=1e-12)  # Observation 2: always the clamped network
            if not flipped: torch.testing.assert_close(T, fV, rtol=0, atol=1e-12)
            elif layer != '4': assert (T - fV).abs().max() > 1e-6  # flips below the output change f_V, not T
            seen.add(flipped)
        if layer != '4': assert seen == {True, False}, 'the sweep should cross from no flips to flips'


def test_convnet_clamped_network_freezes_relu_and_maxpool():
    prob = PROBLEMS[3]
    model, x, _ = prob.build(seed=5, batch=6)
    for layer in ('0', '3', '7'):
        s = f'layer:{layer}'
        V = {k: v + torch.randn_like(v) for k, v in scope_weights(model, s).items()}
        torch.testing.assert_close(taylor_output(model, x, V, s), clamped_output(model, x, V, s), rtol=1e-10, atol=1e-11)
    # sanity of the check itself: with no change the clamped network is the network
    torch.testing.assert_close(clamped_output(model, x, scope_weights(model, 'network')), model(x), rtol=0, atol=1e-13)


def test_smooth_activation_error_is_second_order():
    "For tanh the approximation error along a direction shrinks like eps^2: log-log slope 2 +- 0.1."
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(10, 5, dtype=torch.float64)
    for s in ('network', 'layer:2', 'neuron:0:1'):
        Ws = scope_weights(model, s)
        D = {k: torch.randn_like(v) for k, v in Ws.items()}
        eps = np.logspace(-4, -1, 10)
        err = []
        for e in eps:
            V = {k: Ws[k] + e * D[k] for k in Ws}
            err.append((functional_call(model, substitute(model, s, V), (x,)) - taylor_output(model, x, V, s)).norm().item())
        slope = np.polyfit(np.log(eps), np.log(err), 1)[0]
        assert abs(slope - 2) < 0.1, (s, slope)


@st.composite
def architectures(draw):
    conv = draw(st.booleans())
    depth = draw(st.integers(1, 3))
    widths = [draw(st.integers(1, 6)) for _ in range(depth)]
    n_out = draw(st.integers(1, 5))
    batch = draw(st.integers(1, 4))
    if conv:
        c_in, hw = draw(st.integers(1, 3)), draw(st.integers(4, 7))
        k, pad, stride = draw(st.integers(1, 3)), draw(st.integers(0, 1)), draw(st.integers(1, 2))
        out_hw = (hw + 2 * pad - k) // stride + 1
        layers = [nn.Conv2d(c_in, widths[0], k, stride=stride, padding=pad), nn.ReLU()]
        if draw(st.booleans()) and out_hw >= 2:
            layers.append(nn.MaxPool2d(2)); out_hw //= 2
        layers += [nn.Flatten()]
        fan = widths[0] * out_hw * out_hw
        x_shape = (c_in, hw, hw)
    else:
        fan = draw(st.integers(1, 6)); layers, x_shape = [nn.Linear(fan, widths[0]), nn.ReLU()], (fan,)
        fan = widths[0]
    for w in widths[1:]: layers += [nn.Linear(fan, w), nn.ReLU()]; fan = w
    layers.append(nn.Linear(fan, n_out))
    seed = draw(st.integers(0, 2**16))
    return layers, x_shape, batch, seed


@settings(max_examples=40, deadline=None)
@given(architectures())
def test_property_random_architectures(arch):
    layers, x_shape, batch, seed = arch
    torch.manual_seed(seed)
    model = nn.Sequential(*layers).double()
    x = torch.randn(batch, *x_shape, dtype=torch.float64)
    f0 = model(x)
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)): continue
        lj = layer_jacobian(model, x, name)
        torch.testing.assert_close(lj.f0, f0, rtol=0, atol=1e-13)
        V = {k: v + torch.randn_like(v) for k, v in scope_weights(model, f'layer:{name}').items()}
        T = taylor_output(model, x, V, f'layer:{name}')
        torch.testing.assert_close(lj.taylor({'weight': V[f'{name}.weight'], 'bias': V[f'{name}.bias']}), T, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(T, clamped_output(model, x, V, f'layer:{name}'), rtol=1e-9, atol=1e-10)
        a = int(torch.randint(0, m.weight.shape[0], ()))
        Vn = {k: v + torch.randn_like(v) for k, v in scope_weights(model, f'neuron:{name}:{a}').items()}
        torch.testing.assert_close(lj.taylor({'weight': Vn[f'{name}.weight'], 'bias': Vn[f'{name}.bias']}, neuron=a),
                                   taylor_output(model, x, Vn, f'neuron:{name}:{a}'), rtol=1e-9, atol=1e-10)


def test_float32_and_batched_large_inputs_run():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 20))
    x = torch.randn(64, 20)
    V = {k: v + 0.01 for k, v in scope_weights(model, 'layer:0').items()}
    T = taylor_output(model, x, V, 'layer:0')
    assert T.shape == (64, 20) and T.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_matches_cpu():
    prob = PROBLEMS[3]
    model, x, _ = prob.build(seed=7)
    V = {k: v + 0.1 for k, v in scope_weights(model, 'layer:3').items()}
    cpu = taylor_output(model, x, V, 'layer:3')
    mc, xc = model.cuda(), x.cuda()
    gpu = taylor_output(mc, xc, {k: v.cuda() for k, v in V.items()}, 'layer:3')
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer_jacobian(mc, xc, '3').taylor({'weight': V['3.weight'].cuda(), 'bias': V['3.bias'].cuda()}).cpu(), cpu, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('scope,error,message', [
    ('layer:nope', ValueError, "layers with parameters: '0', '2', '4'"),
    ('layer:1', ValueError, "'1' (ReLU) has no parameters"),
    ('neuron:2:5', IndexError, 'allowed 0..4'),
    ('neuron:2:-1', IndexError, 'allowed 0..4'),
    ('neuron:2:x', ValueError, 'is not an integer'),
    ('weights', ValueError, 'allowed forms are'),
])
def test_bad_scopes(scope, error, message):
    model, x, _ = PROBLEMS[0].build()
    with pytest.raises(error, match=None) as e: resolve_scope(model, scope)
    assert message in str(e.value)


def test_bad_V_and_modules():
    model, x, y = PROBLEMS[0].build()
    with pytest.raises(KeyError, match='expects exactly'): taylor_output(model, x, {'0.weight': torch.zeros(7, 6)}, 'layer:0')
    with pytest.raises(ValueError, match=r'expected \(7, 6\)'): taylor_output(model, x, {'0.weight': torch.zeros(6, 7)}, 'layer:0:nobias')
    with pytest.raises(ValueError, match='no parameters'): resolve_scope(nn.Sequential(nn.ReLU()), 'network')
    with pytest.raises(ValueError, match='allowed'): taylor_loss(model, x, y, scope_weights(model), loss='l1')
    with pytest.raises(ValueError, match='Linear and Conv2d'): layer_jacobian(model, x, '1')
    with pytest.raises(ValueError, match='applied more than once'):
        r = nn.ReLU(); activation_configuration(nn.Sequential(nn.Linear(6, 6), r, nn.Linear(6, 6), r).double(), x)
    with pytest.raises(TypeError, match='a Scope or a string'): Scope.parse(3)


class _Tied(nn.Module):
    "One Linear layer applied twice (shared weights), one nn.ReLU module used twice."
    def __init__(self):
        super().__init__()
        self.i, self.h, self.r, self.o = nn.Linear(3, 4), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)
    def forward(self, x): return self.o(self.r(self.h(self.r(self.h(self.i(x))))))


def test_the_factored_form_refuses_what_it_cannot_represent():
    "Shared weights, reused ReLU modules, batch norm in training mode and string padding: each a clear error, not a silently wrong expansion."
    torch.manual_seed(0)
    m, x = _Tied().double(), torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"layer 'h' is applied 2 times in one forward pass \(shared weights\)"): layer_jacobian(m, x, 'h')
    with pytest.raises(ValueError, match=r"module 'r' is applied more than once"): clamped_output(m, x, scope_weights(m, 'network'))
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double()
    with pytest.raises(ValueError, match=r"\['1'\]: batch norm in training mode mixes the samples"): layer_jacobian(bn, x, '0')
    bn.eval()  # per sample again: the factored form equals the generic path
    V = {k: v + 0.1 for k, v in scope_weights(bn, 'layer:0').items()}
    torch.testing.assert_close(layer_jacobian(bn, x, '0').taylor({k.split('.')[-1]: v for k, v in V.items()}), taylor_output(bn, x, V, 'layer:0'))
    for pad in ('same', 'valid'):
        c = nn.Sequential(nn.Conv2d(1, 2, 3, padding=pad), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)).double(); xi = torch.randn(2, 1, 6, 6, dtype=torch.float64); c(xi)
        with pytest.raises(ValueError, match=f"layer '0' has padding='{pad}': the factored form takes the padding as numbers"): layer_jacobian(c, xi, '0')
