"""Shared small problems for the cross-checks (BackPACK's pattern: one list, each with an id)."""
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn


@dataclass
class Problem:
    id: str
    make: Callable[[], nn.Module]
    x_shape: tuple
    loss: str
    n_out: int

    def build(self, seed=0, batch=5, dtype=torch.float64):
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        model = self.make().to(dtype)
        x = torch.randn(batch, *self.x_shape, generator=g, dtype=dtype)
        if self.loss == 'mse': y = torch.randn(batch, self.n_out, generator=g, dtype=dtype)
        else: y = torch.randint(0, self.n_out, (batch,), generator=g)
        return model, x, y


def mlp(): return nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 4))
def autoencoder(): return nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 12))
def convnet():
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(3, 4, 3, stride=1, padding=0), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))

PROBLEMS = [Problem('mlp-mse', mlp, (6,), 'mse', 4),
            Problem('mlp-ce', mlp, (6,), 'cross_entropy', 4),
            Problem('autoencoder-mse', autoencoder, (12,), 'mse', 12),
            Problem('convnet-maxpool-ce', convnet, (2, 8, 8), 'cross_entropy', 3)]
