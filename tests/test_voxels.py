import math

import numpy as np
import pytest
import torch

from gmx_deepbackmap import voxels
from gmx_deepbackmap.voxels import Grid, coordinates_to_density, density_to_coordinates, voxelise


def reference_density(positions, channels, mask, n_channels, size=8, length=1.2, sigma=0.1):
    """Per-voxel analytic Gaussian sum, explicit loops over particles and voxels (float64)."""
    batch, n = channels.shape
    centre = lambda i: -length / 2 + (i + 0.5) * length / size  # noqa: E731
    out = np.zeros((batch, n_channels, size, size, size))
    for b in range(batch):
        for m in range(n):
            if not mask[b, m] or channels[b, m] < 0:
                continue
            for i in range(size):
                for j in range(size):
                    for k in range(size):
                        d2 = sum((positions[b, m, a] - centre(ijk)) ** 2 for a, ijk in enumerate((i, j, k)))
                        out[b, channels[b, m], i, j, k] += math.exp(-d2 / (2 * sigma**2))
    return out


def random_particles(batch=3, n=9, n_channels=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    positions = (torch.rand(batch, n, 3, generator=g) - 0.5) * 1.8  # some outside the cube
    channels = torch.randint(-1, n_channels, (batch, n), generator=g)
    mask = torch.rand(batch, n, generator=g) > 0.2
    return positions, channels, mask


def test_grid_centres():
    grid = Grid()
    assert grid.spacing == pytest.approx(0.15)
    axis = grid.axis()
    assert axis.dtype == torch.float32 and axis.shape == (8,)
    assert torch.allclose(axis, torch.linspace(-0.525, 0.525, 8))
    centres = grid.centres()
    assert centres.shape == (8, 8, 8, 3)
    assert torch.equal(centres[1, 2, 3], axis[[1, 2, 3]])
    assert grid.axis() is axis  # cached


@pytest.mark.parametrize("chunk,gradients", [(1024, False), (1024, True), (5, True)])
def test_voxelise_matches_reference(monkeypatch, chunk, gradients):
    """Compiled (no gradients) and torch (gradients; chunk 5 exercises chunk boundaries)."""
    monkeypatch.setattr(voxels, "_CPU_CHUNK", chunk)
    positions, channels, mask = random_particles()
    out = voxelise(positions.clone().requires_grad_(gradients), channels, 4, Grid(), mask)
    ref = reference_density(positions.double().numpy(), channels.numpy(), mask.numpy(), 4)
    assert out.shape == (3, 4, 8, 8, 8) and out.dtype == torch.float32
    np.testing.assert_allclose(out.detach().numpy(), ref, atol=1e-5)


def test_compiled_splat_adds_what_torch_adds():
    """Without gradients on CPU a compiled loop splats; with them torch does: same densities,
    weights and repeated rows included."""
    positions, channels, mask = random_particles(batch=4, n=40, n_channels=3, seed=2)
    rows = torch.randint(0, 5, (len(positions.view(-1, 3)),), generator=torch.Generator().manual_seed(3))
    weights = torch.rand(len(rows), generator=torch.Generator().manual_seed(4)) - 0.5
    compiled, differentiable = torch.ones(5, 512), torch.ones(5, 512)
    voxels.splat(compiled, rows, positions.view(-1, 3), Grid(), weights)
    voxels.splat(differentiable, rows, positions.view(-1, 3).requires_grad_(True), Grid(), weights)
    assert torch.allclose(compiled, differentiable.detach(), atol=1e-6)


def test_voxelise_padding_is_ignored_even_if_nan():
    positions, channels, mask = random_particles()
    positions = positions.clone().requires_grad_(True)
    poisoned = torch.where(mask[..., None], positions, torch.nan)
    out = voxelise(poisoned, channels, 4, Grid(), mask)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(positions.grad).all()
    assert torch.equal(positions.grad[~mask], torch.zeros_like(positions.grad[~mask]))
    assert torch.allclose(out, voxelise(positions.detach(), channels, 4, Grid(), mask))


def test_voxelise_gradcheck():
    positions, channels, mask = random_particles(batch=2, n=4, n_channels=2, seed=1)
    positions = positions.double().requires_grad_(True)
    fn = lambda p: voxelise(p, channels, 2, Grid(), mask)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (positions,), fast_mode=True)


def test_voxelise_rejects_bad_channel():
    positions, channels, _ = random_particles()
    with pytest.raises(ValueError, match="out of range"):
        voxelise(positions, channels.clamp(min=0) + 1, 4, Grid())


def test_single_atom_density_is_voxelised_atom():
    positions = (torch.rand(5, 3) - 0.5) * 1.2
    single = voxelise(positions[:, None], torch.zeros(5, 1, dtype=torch.long), 1, Grid())
    assert torch.allclose(coordinates_to_density(positions, Grid()), single[:, 0], atol=1e-6)
    assert coordinates_to_density(positions[:, None], Grid()).shape == (5, 1, 8, 8, 8)


def test_round_trip_inside_the_cube():
    """Within |x| <= 0.4 nm per axis the edge bias is < 0.004 nm (sigma 0.1 nm, 1.2 nm cube)."""
    grid = Grid()
    positions = (torch.rand(200, 2, 3) * 2 - 1) * 0.4
    back = density_to_coordinates(coordinates_to_density(positions, grid), grid)
    assert back.shape == (200, 2, 3)
    assert (back - positions).abs().max() < 0.01
    assert density_to_coordinates(coordinates_to_density(positions[:, 0], grid), grid).shape == (200, 3)


def test_round_trip_edge_bias_is_inwards():
    """The stated limit: near the edge the cut Gaussian pulls the centre inwards by > 0.01 nm."""
    grid = Grid()
    positions = torch.tensor([[0.5, -0.5, 0.0]])
    back = density_to_coordinates(coordinates_to_density(positions, grid), grid)
    assert back[0, 0] < 0.49 and back[0, 1] > -0.49 and abs(back[0, 2]) < 1e-4


def test_density_to_coordinates_is_differentiable():
    density = torch.rand(4, 1, 8, 8, 8, requires_grad=True)
    density_to_coordinates(density, Grid()).sum().backward()
    assert torch.isfinite(density.grad).all() and density.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_voxelise_cuda_matches_cpu():
    positions, channels, mask = random_particles(batch=16, n=50, n_channels=6)
    cpu = voxelise(positions, channels, 6, Grid(), mask)
    gpu = voxelise(positions.cuda(), channels.cuda(), 6, Grid(), mask.cuda())
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)
