"""Small problems with known answers for the optimizer tests."""

from __future__ import annotations

import torch


class LeastSquares:
    """f(x) = ||A x - b||^2 / (2 n) on mini-batches; consistent (b = A x*) unless noise > 0, so f_* = 0."""

    def __init__(
        self, n: int = 64, p: int = 10, noise: float = 0.0, seed: int = 0, dtype=torch.float64
    ):
        g = torch.Generator().manual_seed(seed)
        self.A = torch.randn(n, p, generator=g, dtype=dtype)
        self.x_star = torch.randn(p, generator=g, dtype=dtype)
        self.b = self.A @ self.x_star + noise * torch.randn(n, generator=g, dtype=dtype)
        self.n, self.p, self.dtype = n, p, dtype

    def init(self, seed: int = 1) -> torch.nn.Parameter:
        g = torch.Generator().manual_seed(seed)
        return torch.nn.Parameter(torch.randn(self.p, generator=g, dtype=self.dtype))

    def loss(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        A, b = (self.A, self.b) if idx is None else (self.A[idx], self.b[idx])
        return 0.5 * (A @ x - b).square().mean()

    def batches(self, steps: int, batch_size: int = 8, seed: int = 2):
        g = torch.Generator().manual_seed(seed)
        return [torch.randint(0, self.n, (batch_size,), generator=g) for _ in range(steps)]


def mlp(seed: int = 0, dtype=torch.float64) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(
        dtype
    )


def regression_data(n: int = 64, seed: int = 3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 6, generator=g, dtype=dtype)
    Y = torch.randn(n, 3, generator=g, dtype=dtype)
    return X, Y


def train(model, opt, steps: int, X, Y, batch_size: int = 16, loss_fn=None, start: int = 0):
    """Run `steps` MoMo/torch steps on fixed mini-batches; returns the list of losses."""
    loss_fn = loss_fn or (lambda out, y: (out - y).square().mean())
    losses = []
    for k in range(start, start + steps):
        i = (k * batch_size) % X.shape[0]
        xb, yb = X[i : i + batch_size], Y[i : i + batch_size]
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        if isinstance(opt, torch.optim.SGD | torch.optim.Adam | torch.optim.AdamW):
            opt.step()
        else:
            opt.step(loss=loss)
        losses.append(loss.item())
    return losses
