"""The figure-3 and figure-4(a) configurations record within their stated disk budget (the recorder's estimate, a real
record of one CIFAR-10-shaped batch of 128), and compact convolution records make figure 3's conv layer 2 at least 4x smaller."""
import math

import pytest
import torch

from ntaylor_nb.regret import RegretRecorder
from ntaylor_nb.train import FIGURES, build_model, figure_config, run_scopes


def recorded_rounds(cfg):
    "Rounds a figure's run records: train.py's epochs of floor(50,000 / 128) CIFAR-10 batches (the last, partial one dropped), every regret_every-th."
    return math.ceil(cfg.epochs * (50000 // 128) / cfg.regret_every)


def per_round(cfg, tmp_path, name, **kw):
    model = build_model(cfg, (3, 32, 32))
    x = torch.randn(128, 3, 32, 32)
    rec = RegretRecorder(model, cfg.loss, run_scopes(cfg, model), tmp_path / name, x, 1, cfg.neurons_per_layer, cfg.seed,
                         chunk_size=cfg.regret_chunk, disk_budget=1e12, memory_budget=1e12, **kw)
    return rec.manifest['estimate']['bytes_per_round'], rec.manifest['layers']


@pytest.mark.parametrize('name', list(FIGURES))
def test_figure_configuration_fits_its_disk_budget(name, tmp_path):
    cfg = figure_config(name, optimizer='rmsprop')
    b, layers = per_round(cfg, tmp_path, 'new')
    rounds = recorded_rounds(cfg)
    print(name, b, rounds, b * rounds, {l: e['record'] for l, e in layers.items()})
    assert b * rounds <= cfg.disk_budget and b * cfg.regret_chunk <= 2e9
    if name == 'figure3':
        old, _ = per_round(cfg, tmp_path, 'old', conv_record='conv')
        print('format 2', old)
        assert [layers[l]['record'] for l in ('0', '3', '6')] == ['conv', 'conv_compact', 'conv_compact']
        assert old / b >= 4


def test_figure_4a_layer_scopes_are_determined_by_the_end(tmp_path):
    """Every layer scope figure 4(a) records has fewer variables than its whole recording fixes Taylor rows (recorded rounds
    x 128 samples x 9 logit differences), so its Taylor optimum is not 0 by count at the later prefixes. Conv layers 2
    and 3 (102,464 variables) would be too, but their records at this schedule are over the disk budget by themselves;
    the fully connected layer (196,800) is determined by count at one of 16 log-spaced prefixes only."""
    from ntaylor_nb.taylor import scope_variables, weight_layers
    cfg = figure_config('figure4a', optimizer='adam')
    model = build_model(cfg, (3, 32, 32)); paths = weight_layers(model)
    shapes = {k: list(v.shape) for k, v in model.named_parameters()}
    rows = recorded_rounds(cfg) * 128 * 9
    variables = {n: scope_variables(shapes, f'layer:{paths[n]}') for n in cfg.layers}
    assert all(v < rows for v in variables.values()), (rows, variables)
    conv23, _ = per_round(figure_config('figure4a', optimizer='adam', layers=[2, 3]), tmp_path, 'c23')
    assert conv23 * recorded_rounds(cfg) > cfg.disk_budget  # why they are left out
    from ntaylor_nb.growth import log_prefixes
    fc = scope_variables(shapes, f'layer:{paths[4]}')
    assert (log_prefixes(recorded_rounds(cfg), 16) * 128 * 9 > fc).sum() <= 1
