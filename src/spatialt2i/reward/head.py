"""The Gaussian reward head: hidden state at ``<reward>`` -> (mu, log_sigma), kept in fp32."""

from __future__ import annotations

import torch
from torch import Tensor, nn

LOG_SIGMA_RANGE = (-7.0, 7.0)


class GaussianHead(nn.Module):
    """A two-layer MLP mapping a hidden state to the mean and log-std of a Gaussian score."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, 2))
        with torch.no_grad():  # start near mu = 0, sigma = 1
            self.net[-1].weight.mul_(0.1)
            self.net[-1].bias.zero_()

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(h.float())
        return out[..., 0], out[..., 1].clamp(*LOG_SIGMA_RANGE)
