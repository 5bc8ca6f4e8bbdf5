"""Mixed precision: bf16 autocast, and GradScaler through scaler.step(opt, loss=unscaled_loss)."""

from __future__ import annotations

import pytest
import torch
from momo_problems import regression_data

from momo import Momo, MomoAdam


def model32():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))


@pytest.mark.parametrize("cls", [Momo, MomoAdam])
def test_bf16_autocast_trains(cls):
    X, Y = (t.float() for t in regression_data())
    model = model32()
    opt = cls(model.parameters(), lr=0.1)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = (model(X).float() - Y).square().mean()
        loss.backward()
        opt.step(loss=loss)
        losses.append(loss.item())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize("cls", [Momo, MomoAdam])
def test_grad_scaler_step_with_unscaled_loss_matches_unscaled_training(cls):
    X, Y = (t.float() for t in regression_data())
    runs = []
    for use_scaler in (False, True):
        model = model32()
        opt = cls(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=use_scaler)
        for _ in range(10):
            opt.zero_grad()
            loss = (model(X) - Y).square().mean()
            scaler.scale(loss).backward()
            scaler.step(opt, loss=loss)  # GradScaler unscales the gradients first
            scaler.update()
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
