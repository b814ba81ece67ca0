"""nn.Modules only. The same Decoder, f_theta(z) = B ReLU(A z + a) + b, serves both fits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PIXELS = 784


class Decoder(nn.Module):
    """z -> Bernoulli logits f_theta(z) over the 784 pixels."""

    def __init__(self, z_dim: int = 20, hidden: int = 400, x_dim: int = PIXELS):
        super().__init__()
        self.z_dim = z_dim
        self.fc1 = nn.Linear(z_dim, hidden)  # A, a
        self.fc2 = nn.Linear(hidden, x_dim)  # B, b

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(z)))


class Encoder(nn.Module):
    """y -> (mu, logvar) of the Gaussian q_phi(z | y)."""

    def __init__(self, z_dim: int = 20, hidden: int = 400, x_dim: int = PIXELS):
        super().__init__()
        self.fc = nn.Linear(x_dim, hidden)  # W, w
        # mu and logvar heads fused into one matmul; same init distribution as two Linear(hidden, z_dim).
        self.head = nn.Linear(hidden, 2 * z_dim)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(F.relu(self.fc(y))).chunk(2, dim=-1)
        return mu, logvar


class VAE(nn.Module):
    def __init__(self, z_dim: int = 20, hidden: int = 400, x_dim: int = PIXELS):
        super().__init__()
        self.encoder = Encoder(z_dim, hidden, x_dim)
        self.decoder = Decoder(z_dim, hidden, x_dim)

    def forward(self, y: torch.Tensor, noise: torch.Tensor | None = None):
        """Logits of p(y | z) at one reparameterised draw z = mu + sigma * u, with mu and logvar."""
        mu, logvar = self.encoder(y)
        if noise is None:
            noise = torch.randn_like(mu)
        z = mu + torch.exp(0.5 * logvar) * noise
        return self.decoder(z), mu, logvar
