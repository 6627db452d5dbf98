"""The figure-3 and figure-4(a) configurations record within their stated disk budget (the recorder's estimate, a real
record of one CIFAR-10-shaped batch of 128), and compact convolution records make figure 3's conv layer 2 at least 4x smaller."""
import math

import pytest
import torch

from ntaylor_nb.regret import RegretRecorder
from ntaylor_nb.train import FIGURES, build_model, figure_config, run_scopes


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
    rounds = math.ceil(cfg.epochs * 50000 // 128 / cfg.regret_every)
    print(name, b, rounds, b * rounds, {l: e['record'] for l, e in layers.items()})
    assert b * rounds <= cfg.disk_budget and b * cfg.regret_chunk <= 2e9
    if name == 'figure3':
        old, _ = per_round(cfg, tmp_path, 'old', conv_record='conv')
        print('format 2', old)
        assert [layers[l]['record'] for l in ('0', '3', '6')] == ['conv', 'conv_compact', 'conv_compact']
        assert old / b >= 4
