"""Generation: the generator places the atoms of a batch of steps one after the other
(method.md sections 2 and 4), shared by training (real and generated sequences for the critic)
and sampling (coordinates only).

`environment_densities` voxelises every step's static environment, `rollout` runs the generator
along each sequence (each generated density joins the environment of the next atom), `reach` is
how far apart beads can still see each other's atoms, and `to_device` moves a batch's network
inputs to the device.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .environment import Batch
from .networks import Generator
from .voxels import Grid, density_to_coordinates, splat, voxelise


def reach(half_extent: float) -> float:
    """Bead-bead distance within which a bead's atoms can enter another bead's cube of half edge
    `half_extent` (the model's, or `TrainConfig.half_extent`)."""
    return math.sqrt(3) * half_extent + 0.4


def environment_densities(batch: Batch, n_channels: int, grid: Grid) -> torch.Tensor:
    """Voxelised static environment of every step: (B, L, C, D, D, D).

    Most particles keep their channel through a sequence (only close intramolecular partners
    change relation), so the first step's densities are computed once, copied to every step, and
    each particle whose channel changed at a step is moved there from its old channel to its new
    one. Padded steps keep the first step's densities.
    """
    b, n_steps = batch.step_mask.shape
    particles = batch.particles.to(torch.float32)
    first = voxelise(particles, batch.channels[:, 0], n_channels, grid)
    out = first[:, None].expand(b, n_steps, *first.shape[1:]).contiguous()
    item, step, particle = torch.nonzero(
        (batch.channels != batch.channels[:, :1]) & batch.step_mask[..., None], as_tuple=True
    )
    if not len(item):
        return out
    row = (item * n_steps + step) * n_channels
    new, old = batch.channels[item, step, particle], batch.channels[item, 0, particle]
    into, out_of = new >= 0, old >= 0  # a particle may also appear or vanish (channel -1)
    moved = particles[item, particle]
    signs = torch.cat([moved.new_ones(int(into.sum())), -moved.new_ones(int(out_of.sum()))])
    splat(
        out.view(-1, grid.size**3),
        torch.cat([(row + new)[into], (row + old)[out_of]]),
        torch.cat([moved[into], moved[out_of]]),
        grid,
        signs,
    )
    return out


def rollout(
    generator: Generator,
    static: torch.Tensor,
    batch: Batch,
    grid: Grid,
    n_types: int,
    noise_dim: int,
    sequence: torch.Tensor | None = None,
    sampling: bool = False,
    noise_scale: float = 1.0,
):
    """Place the atoms of each sequence one after the other.

    With `sequence` None the generator's own densities join the environment (generation);
    otherwise the given densities (B, L, D, D, D) do (the real sequence, for the critic).
    Returns per-step environments (B, L, C, D, D, D), densities (B, L, D, D, D) and coordinates (B, L, 3).
    `sampling` (generation for the sampler, which needs coordinates only): padded steps are not
    generated (zero density, coordinates 0) and the environments are not kept (None).
    `noise_scale` multiplies the generator's noise (1: as trained; see `sampling.system.noise_scale_for`).
    """
    b, n_steps = batch.step_mask.shape
    one_hot = torch.nn.functional.one_hot
    types = one_hot(batch.atom_types, n_types).to(static)
    envs, dens = [], []
    for step in range(n_steps):
        env = static[:, step]
        if step:
            placed = torch.stack(dens, 1) if sequence is None else sequence[:, :step]
            channel = batch.sequence_channels[:, step, :step]  # (B, step)
            weights = one_hot(channel.clamp(min=0), static.shape[2]).to(static) * (channel >= 0)[..., None]
            env = env + torch.einsum("bkc,bkxyz->bcxyz", weights, placed)
        if not sampling:
            envs.append(env)
        if sequence is not None:
            dens.append(sequence[:, step])
            continue
        z = noise_scale * torch.randn(b, noise_dim, device=static.device, dtype=static.dtype)
        live = batch.step_mask[:, step]
        if sampling and not bool(live.all()):
            density = static.new_zeros(b, *static.shape[-3:])
            density[live] = generator(env[live], z[live], types[live, step])[:, 0].to(density)
            dens.append(density)
        else:
            dens.append(generator(env, z, types[:, step])[:, 0].to(static))
    density = torch.stack(dens, 1)
    coords = density_to_coordinates(density, grid)
    if sampling:
        return None, density, torch.where(batch.step_mask[..., None], coords, 0)
    return torch.stack(envs, 1), density, coords


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The network inputs of a batch on the training device (float32 positions)."""
    moved = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    for name in ("particles", "target"):
        moved[name] = moved[name].to(device, torch.float32)
    for name in ("channels", "sequence_channels", "atom_types", "step_mask"):
        moved[name] = moved[name].to(device)
    return Batch(**moved)
