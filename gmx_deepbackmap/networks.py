"""Generator and critic of DeepBackmap: residual 3D CNNs over the voxelised local environment.

Generator: embed the environment at D^3, downsample to (D/2)^3, join noise and atom type (a linear
map to a (D/2)^3 feature map), upsample back to D^3 with a transposed convolution, join the D^3
embedding (skip connection) and emit one density channel through a sigmoid.
Critic: [environment, candidate density, broadcast atom type] -> D^3 -> (D/2)^3 -> (D/4)^3 -> scalar.

Residual blocks are pre-activation (GroupNorm, LeakyReLU(0.2), conv, twice). GroupNorm with one
group is the per-sample layer norm of the authors' code; nothing couples samples in a batch, as the
WGAN gradient penalty requires. Inputs may be `torch.channels_last_3d`; both modules are
torch.compile-able (static shapes, no data-dependent control flow) but never require it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class NetworkConfig:
    """Sizes of generator and critic.

    Defaults are sized for CPU training. The paper's (GPU) networks, from the authors' code:
    width 128 (256 at (D/2)^3), blocks (3, 2, 3), noise_dim 256, layer norm; e.g.
    NetworkConfig(width=128, blocks=(3, 2, 3), noise_dim=256). `n_env_channels` and `n_atom_types`
    come from the topology and mapping (sPS: atom types C, C_AR, H, H_AR).

    width: feature channels at D^3 (2x at (D/2)^3, 4x at the critic's (D/4)^3).
    blocks: residual blocks per stage: D^3 embedding, (D/2)^3 after joining the noise, D^3 output
        (the critic uses the first two).
    norm_groups: GroupNorm groups (1 = layer norm; 0 = no normalisation); must divide width.
    """

    width: int = 16
    blocks: tuple[int, int, int] = (1, 1, 1)
    noise_dim: int = 32
    n_atom_types: int = 4
    n_env_channels: int = 30
    grid_size: int = 8
    norm_groups: int = 1


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm computed in float32 whatever the input's dtype, returned in the input's dtype:
    under bfloat16 autocast on CPU, 3x faster than torch's bfloat16 kernel (channels-last 8^3 maps),
    and statistics summed in float32 as CUDA autocast does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def _norm(channels: int, groups: int) -> nn.Module:
    return GroupNorm(groups, channels) if groups else nn.Identity()


def _pre_act(channels: int, groups: int) -> list[nn.Module]:
    return [_norm(channels, groups), nn.LeakyReLU(0.2)]


class ResBlock(nn.Module):
    """x + conv(act(norm(conv(act(norm(x)))))) at constant width and resolution."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            *_pre_act(channels, groups),
            nn.Conv3d(channels, channels, 3, padding=1),
            *_pre_act(channels, groups),
            nn.Conv3d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class Upsample2(nn.ConvTranspose3d):
    """ConvTranspose3d(in, out, kernel_size=2, stride=2), computed as one matrix product: the 2^3
    output patches do not overlap, so each input voxel maps to its patch independently. Same
    parameters and results as the parent; on CPU 7x faster at the generator's sizes (channels-last
    output, as mkldnn would give)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d = x.shape[:3]
        o = self.out_channels
        patches = torch.addmm(
            self.bias.repeat(8),
            x.permute(0, 2, 3, 4, 1).reshape(-1, c),
            self.weight.permute(0, 2, 3, 4, 1).reshape(c, 8 * o),
        )  # (b d^3, (i j k o))
        y = patches.view(b, d, d, d, 2, 2, 2, o).permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, 2 * d, 2 * d, 2 * d, o)
        return y.permute(0, 4, 1, 2, 3)


def _blocks(n: int, channels: int, groups: int) -> list[nn.Module]:
    return [ResBlock(channels, groups) for _ in range(n)]


class Generator(nn.Module):
    """(environment (B, C_env, D, D, D), noise (B, noise_dim), atom type one-hot (B, n_types))
    -> density (B, 1, D, D, D) in (0, 1)."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        w, g, (n1, n2, n3) = config.width, config.norm_groups, config.blocks
        self.coarse = config.grid_size // 2
        self.embed = nn.Sequential(nn.Conv3d(config.n_env_channels, w, 3, padding=1), *_blocks(n1, w, g))
        self.down = nn.Conv3d(w, 2 * w, 3, stride=2, padding=1)
        self.code = nn.Linear(config.noise_dim + config.n_atom_types, w * self.coarse**3)
        self.middle = nn.Sequential(*_pre_act(3 * w, g), nn.Conv3d(3 * w, 2 * w, 3, padding=1), *_blocks(n2, 2 * w, g))
        self.up = nn.Sequential(*_pre_act(2 * w, g), Upsample2(2 * w, w))
        self.out = nn.Sequential(*_pre_act(2 * w, g), nn.Conv3d(2 * w, w, 3, padding=1), *_blocks(n3, w, g))
        self.head = nn.Sequential(*_pre_act(w, g), nn.Conv3d(w, 1, 1))

    def forward(self, env: torch.Tensor, noise: torch.Tensor, atom_type: torch.Tensor) -> torch.Tensor:
        e = self.embed(env)
        code = self.code(torch.cat([noise, atom_type], dim=1)).view(len(env), -1, *(self.coarse,) * 3)
        h = self.middle(torch.cat([self.down(e), code], dim=1))
        h = self.out(torch.cat([self.up(h), e], dim=1))
        return torch.sigmoid(self.head(h))


class Critic(nn.Module):
    """(density (B, 1, D, D, D), environment (B, C_env, D, D, D), atom type one-hot (B, n_types))
    -> score (B,)."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        w, g, (n1, n2, _) = config.width, config.norm_groups, config.blocks
        c_in = config.n_env_channels + 1 + config.n_atom_types
        self.net = nn.Sequential(
            nn.Conv3d(c_in, w, 3, padding=1),
            *_blocks(n1, w, g),
            *_pre_act(w, g),
            nn.Conv3d(w, 2 * w, 3, stride=2, padding=1),
            *_blocks(n2, 2 * w, g),
            *_pre_act(2 * w, g),
            nn.Conv3d(2 * w, 4 * w, 3, stride=2, padding=1),
            *_pre_act(4 * w, g),
            nn.Flatten(),
            nn.Linear(4 * w * (config.grid_size // 4) ** 3, 1),
        )

    def forward(self, density: torch.Tensor, env: torch.Tensor, atom_type: torch.Tensor) -> torch.Tensor:
        types = atom_type[:, :, None, None, None].expand(-1, -1, *density.shape[2:])
        return self.net(torch.cat([env, density, types], dim=1)).squeeze(1)


def _interpolate(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """eps * real + (1 - eps) * fake per sample, a new leaf (not lerp: fake may be bf16 under autocast)."""
    eps = eps.view(-1, *(1,) * (real.dim() - 1))
    return (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)


def gradient_penalty(
    critic: Callable[..., torch.Tensor],
    real: torch.Tensor | Sequence[torch.Tensor],
    fake: torch.Tensor | Sequence[torch.Tensor],
    *conditioning: torch.Tensor,
    lambda_gp: float = 0.1,
) -> torch.Tensor:
    """WGAN-GP term lambda_gp * mean_b (||grad_x critic(x_b, *conditioning)|| - 1)^2 at
    x = eps * real + (1 - eps) * fake, eps ~ U(0, 1) per sample.

    `real` and `fake` are the critic's leading input(s): a tensor, or a tuple interpolated with the
    same eps and penalised on the joint gradient norm (e.g. (density, env) when the fake
    environment holds generated atoms). Differentiable in the critic's parameters. Pass the eager
    critic (`compiled._orig_mod`): torch.compile does not support the double backward this needs.
    """
    reals = (real,) if isinstance(real, torch.Tensor) else tuple(real)
    fakes = (fake,) if isinstance(fake, torch.Tensor) else tuple(fake)
    eps = torch.rand(len(reals[0]), device=reals[0].device, dtype=reals[0].dtype)
    mixed = [_interpolate(r, f, eps) for r, f in zip(reals, fakes, strict=True)]
    grads = torch.autograd.grad(critic(*mixed, *conditioning).sum(), mixed, create_graph=True)
    norm = torch.cat([gr.flatten(1) for gr in grads], dim=1).norm(dim=1)
    return lambda_gp * ((norm - 1) ** 2).mean()
