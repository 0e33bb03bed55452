"""Gaussian voxel densities on the local 8^3 grid, and the way back to coordinates.

Each particle is exp(-|x - r|^2 / (2 sigma^2)) sampled at the voxel centres of a cube centred on
the origin (the current bead, in its local frame). The Gaussian is separable, so a particle's
density is the outer product of three per-axis profiles. Where gradients are needed (training),
`voxelise` builds those outer products in cache-sized chunks and sums them into their (sample,
channel) maps with `index_add_`; without them on a CPU (sampling, the critic's real inputs) a
compiled loop adds each product straight into its map. The chunked sums, measured on one CPU
core at B=512, M=200, C=30 (~0.1 s): 2x faster than the same without chunks or than a factored
(channel x axis) batched matmul, 3x faster than a one-hot matmul over channels, 25x faster than
direct 3D distances; the compiled loop, on 2 cores at B=512, M=180, C=28: 2.6-3.5x faster than
the chunked sums.

Limit of `density_to_coordinates`: the centre of mass of a Gaussian cut by the cube edge is pulled
inwards. For sigma = 0.1 nm on the default grid the bias per axis is below 1e-4 nm up to
|x| = 0.3 nm, 0.004 nm at 0.4 nm, 0.01 nm at 0.44 nm and 0.04 nm at 0.525 nm (outermost centre).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numba
import torch

from .parallel import FAST_MATH, match_torch_threads

# Particles per chunk on CPU: the chunk's outer products (chunk x 512 floats, 2 MiB) stay in cache.
_CPU_CHUNK = 1024

Device = torch.device | str | None


@dataclass(frozen=True)
class Grid:
    """Cubic voxel grid: `size`^3 voxels over an edge of `length` nm, Gaussian width `sigma` nm."""

    size: int = 8
    length: float = 1.2
    sigma: float = 0.1

    @property
    def spacing(self) -> float:
        return self.length / self.size

    def axis(self, device: Device = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Voxel-centre coordinates along one axis, (size,), cached per device and dtype."""
        return _axis(self.size, self.length, torch.device(device or "cpu"), dtype)

    def centres(self, device: Device = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Voxel-centre coordinates (size, size, size, 3), index order (x, y, z), cached."""
        return _centres(self.size, self.length, torch.device(device or "cpu"), dtype)

    def profiles(self, positions: torch.Tensor) -> torch.Tensor:
        """Per-axis Gaussian profiles (..., 3, size) of positions (..., 3)."""
        axis = self.axis(positions.device, positions.dtype)
        return torch.exp(-((positions[..., None] - axis) ** 2) / (2 * self.sigma**2))


@functools.cache
def _axis(size: int, length: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return ((torch.arange(size, dtype=torch.float64) + 0.5) * (length / size) - length / 2).to(device, dtype)


@functools.cache
def _centres(size: int, length: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    axis = _axis(size, length, device, dtype)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)


def voxelise(
    positions: torch.Tensor,
    channels: torch.Tensor,
    n_channels: int,
    grid: Grid,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Channel densities (B, C, D, D, D) of particle sets: positions (B, M, 3) nm in the local frame,
    channels (B, M) int in [0, C) or -1 for padding, optional mask (B, M) bool (False = padding).

    Padding is dropped before any arithmetic, so its positions may hold anything (even NaN).
    Differentiable in positions; the output has the dtype and device of `positions`.
    """
    batch, d = positions.shape[0], grid.size
    valid = channels >= 0 if mask is None else mask & (channels >= 0)
    b, m = valid.nonzero(as_tuple=True)
    channel = channels[b, m]
    if channel.numel() and int(channel.max()) >= n_channels:
        raise ValueError(f"channel index {int(channel.max())} out of range for {n_channels} channels")
    out = positions.new_zeros(batch * n_channels, d**3)
    splat(out, b * n_channels + channel, positions[b, m], grid)
    return out.view(batch, n_channels, d, d, d)


def splat(
    out: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor, grid: Grid, weights: torch.Tensor | None = None
) -> None:
    """Add the density of each particle (positions (N, 3) nm, local frame), times its weight (N,)
    if given, to its row of `out` (R, D^3), in place: `voxelise` without a new output, for
    corrections to densities already built. Without gradients on a CPU, a compiled loop
    (`_splat_loop`) does it; otherwise torch (differentiable)."""
    d = grid.size
    g = grid.profiles(positions.to(out.dtype))  # (N, 3, D)
    if out.device.type == "cpu" and not any(t is not None and t.requires_grad for t in (out, positions, weights)):
        if len(rows) and not (int(rows.min()) >= 0 and int(rows.max()) < len(out)):
            raise IndexError("splat: a row outside the output")  # the compiled loop does not check its bounds
        _splat_loop(
            out.numpy(),
            rows.numpy(),
            g.numpy(),
            None if weights is None else weights.to(out).numpy(),
            match_torch_threads(),
        )
        return
    gx = g[:, 0, :, None]  # (N, D, 1)
    gyz = (g[:, 1, :, None] * g[:, 2, None, :]).reshape(-1, 1, d * d)  # (N, 1, D*D)
    if weights is not None:
        gx = gx * weights.to(gx)[:, None, None]
    step = _CPU_CHUNK if positions.device.type == "cpu" else max(len(rows), 1)
    for i in range(0, len(rows), step):
        s = slice(i, i + step)
        out.index_add_(0, rows[s], (gx[s] * gyz[s]).reshape(-1, d**3))


@numba.njit(parallel=True, cache=True, fastmath=FAST_MATH)
def _splat_loop(out, rows, profiles, weights, threads):  # pragma: no cover (compiled)
    """out[rows[p]] += weights[p] (1 if None) * the outer product of particle p's three `profiles`,
    the rows shared out among `threads` (row modulo thread count) so that no two write one row.
    On 2 CPU cores about 3x faster than torch's products and `index_add_`, which write every
    particle's D^3 values to a temporary first."""
    d = profiles.shape[2]
    for t in numba.prange(threads):
        for p in range(len(rows)):
            r = rows[p]
            if r % threads != t:
                continue
            w = 1.0 if weights is None else weights[p]
            for i in range(d):
                wx = profiles[p, 0, i] * w
                for j in range(d):
                    wxy = wx * profiles[p, 1, j]
                    base = (i * d + j) * d
                    for k in range(d):
                        out[r, base + k] += wxy * profiles[p, 2, k]


def coordinates_to_density(positions: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Gaussian density (..., D, D, D) of single atoms at positions (..., 3): the critic's real sample.

    (B, 3) gives (B, D, D, D); use positions[:, None] for the (B, 1, D, D, D) generator layout.
    """
    g = grid.profiles(positions)
    return g[..., 0, :, None, None] * g[..., 1, None, :, None] * g[..., 2, None, None, :]


def density_to_coordinates(density: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Centre of mass (..., 3) of densities (..., D, D, D): r = sum_x x g(x) / sum_x g(x).

    Differentiable; (B, D, D, D) gives (B, 3), (B, K, D, D, D) gives (B, K, 3). Biased towards the
    centre for atoms near the cube edge (see the module docstring).
    """
    axis = grid.axis(density.device, density.dtype)
    marginals = torch.stack([density.sum((-2, -1)), density.sum((-3, -1)), density.sum((-3, -2))], dim=-2)
    return (marginals @ axis) / marginals[..., 0, :].sum(-1, keepdim=True)
