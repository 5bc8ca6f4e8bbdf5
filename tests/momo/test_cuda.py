"""On a GPU: the step never synchronises with the host, and matches the CPU step. `make test-gpu`."""

from __future__ import annotations

import pytest
import torch

from momo import Momo, MomoAdam

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CASES = [
    (Momo, {"use_fstar": True, "weight_decay": 0.01}),
    (MomoAdam, {"use_fstar": True, "weight_decay": 0.01}),
    (Momo, {"compiled": True}),
    (MomoAdam, {"compiled": True, "divide": False, "weight_decay": 0.01}),
]


def model_on(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).to(
        device
    )


def train(device: str, cls, options, steps: int = 10, check_sync: bool = False):
    model = model_on(device)
    opt = cls(model.parameters(), lr=0.5, **options)
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(64, 32, generator=g).to(device), torch.randn(64, 4, generator=g).to(device)
    for k in range(steps):
        opt.zero_grad()
        loss = (model(X) - Y).square().mean()
        loss.backward()
        if check_sync and k >= 2:  # past lazy state creation and compilation
            torch.cuda.set_sync_debug_mode("error")  # any host synchronisation now raises
        try:
            opt.step(loss=loss)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [p.detach().cpu() for p in model.parameters()]


@pytest.mark.parametrize(("cls", "options"), CASES, ids=[f"{c.__name__}-{o}" for c, o in CASES])
def test_cuda_step_does_not_synchronise_and_matches_cpu(cls, options):
    on_gpu = train("cuda", cls, options, check_sync=True)
    on_cpu = train("cpu", cls, {k: v for k, v in options.items() if k != "compiled"})
    for a, b in zip(on_gpu, on_cpu):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
