"""What every stage of one frame reads and writes (`FrameState`), and the one placement primitive
the generative stages share (`place_schedule`): generate steps under K turns each and keep, per
step, the turn with the lowest local energy among those that keep the recorded chiral centres."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..config import FORWARD_HYDROGEN_ORIENTATIONS, PRECISIONS, SamplerConfig
from ..environment import FORWARD, GIBBS, Batch, Neighbourhood, gather
from ..errors import InputError
from ..generation import environment_densities, rollout, to_device
from ..model import DeepBackmapModel
from .schedules import gibbs_schedule
from .system import SystemParts

MAX_ITEMS = 512  # items (orientations included) per network call: bounds memory, not results


@dataclass
class FrameState:
    """One frame being sampled: the system, the CG frame, the atoms as they stand, the random
    source of the turns, and where progress and the stage trace go."""

    model: DeepBackmapModel
    system: SystemParts
    config: SamplerConfig
    hood: Neighbourhood
    cg: torch.Tensor  # (M, 3) nm
    box: torch.Tensor  # (3, 3) nm
    positions: torch.Tensor  # (N, 3) float64, every atom near its owner bead
    angles: torch.Generator  # every random choice of the frame
    device: torch.device
    temperature: float | None  # K, of the CG frames (the last stage samples at it)
    noise_scale: float
    bfloat16: bool
    progress: Callable[[int], object] | None = None  # called with the number of atoms placed
    trace: Callable[[str, np.ndarray], object] | None = None  # called with a stage name and the positions
    least_strained: tuple[float, torch.Tensor] | None = None  # repair rounds: (strain, positions) kept so far
    repairs_over: bool = False  # a repair round found nothing to repair

    @property
    def plan(self):
        return self.system.plan

    @functools.cached_property
    def sweep_schedule(self) -> list[np.ndarray]:
        """The batches of one Gibbs sweep (`schedules.gibbs_schedule`): the same for every sweep of the frame."""
        return gibbs_schedule(self.plan, self.hood.beads)

    def record(self, name: str) -> None:
        """Hand a copy of the positions after stage `name` to the trace, if one listens."""
        if self.trace is not None:
            self.trace(name, self.positions.numpy().copy())


def native_bfloat16(device: str | torch.device) -> bool:
    """Whether `device` is a CPU with bfloat16 units (AVX512-BF16 or AMX)."""
    cpu = torch.cpu
    return torch.device(device).type == "cpu" and any(
        getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )


def uses_bfloat16(precision: str, device: str | torch.device) -> bool:
    """Whether the generator runs under bfloat16 autocast for `precision` (`config.PRECISIONS`) on `device`."""
    if precision not in PRECISIONS:
        raise InputError(f"precision '{precision}': expected one of {', '.join(PRECISIONS)}")
    return precision == "bfloat16" or (precision == "auto" and native_bfloat16(device))


def place_schedule(
    state: FrameState, schedule: list[np.ndarray], context: int, k: int, score_hidden: bool = False
) -> None:
    """Place every batch of steps of `schedule` in order, each under `k` turns (forward-pass
    hydrogens under at most `FORWARD_HYDROGEN_ORIENTATIONS`), in network calls of at most
    `MAX_ITEMS` items; `score_hidden`: see `environment.gather`."""
    plan = state.plan
    for steps in schedule:
        hydrogens = context == FORWARD and not plan.step_heavy[steps[0]]
        turns = min(k, FORWARD_HYDROGEN_ORIENTATIONS) if hydrogens else k
        for chunk in _chunks(steps, turns):
            place(state, chunk, context, turns, score_hidden)
            if state.progress is not None:
                state.progress(int(plan.step_length[chunk].sum()))


def place(state: FrameState, steps: np.ndarray, context: int, k: int, score_hidden: bool = False) -> None:
    """Generate the steps under k turns each and write to the frame the lowest-energy turn (energy
    as `config.ranking` says) of those that invert or flatten the fewest recorded chiral centres."""
    model, plan, prior = state.model, state.plan, state.system.prior
    n = len(steps)
    items = torch.from_numpy(steps).repeat_interleave(k)
    offset = torch.rand(n, 1, generator=state.angles, dtype=torch.float64) * 2 * math.pi
    angle = (offset + torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)).reshape(-1)
    batch = environments(state, items, torch.full((n * k,), context), angle, score_hidden)
    on_device = to_device(batch, state.device)
    static = environment_densities(on_device, plan.layout.n_channels, model.grid)
    with torch.autocast(state.device.type, dtype=torch.bfloat16, enabled=state.bfloat16):
        _, _, coords = rollout(
            model.generator,
            static,
            on_device,
            model.grid,
            model.network.n_atom_types,
            model.network.noise_dim,
            sampling=True,
            noise_scale=state.noise_scale,
        )
    local = coords.to("cpu", torch.float64)
    if context == FORWARD:  # in Gibbs sweeps a bead sits between two joints; shifting it flipped chirality
        local = local + prior.junction_shift(batch, local)[:, None]
    energy = sum(prior.energies(batch, local, internal=state.config.ranking == "all").values()).view(n, k)
    placed = batch.to_box_frame(local)
    inverted = state.system.stereo.inverted(batch.steps, batch.sequence_atoms, placed, state.positions, state.box).view(
        n, k
    )
    energy = torch.where(inverted == inverted.min(1, keepdim=True).values, energy, torch.inf)
    chosen = torch.arange(n) * k + energy.argmin(1)
    atoms = batch.sequence_atoms[chosen]
    present = atoms >= 0
    state.positions[atoms[present]] = placed[chosen][present]


def standing_energies(state: FrameState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S,) local energy of every step's atoms where they stand now, each seeing every other atom
    (hydrogens included), (S,) the energy of each step's worst Lennard-Jones pair and (S,) of its
    worst angle or dihedral term, kJ/mol (`LocalPrior.total_and_strain`)."""
    plan = state.plan
    out = np.empty((3, len(plan.step_bead)))
    for chunk in _chunks(np.arange(out.shape[1]), 1):
        items = torch.from_numpy(chunk)
        zero = torch.zeros(len(chunk), dtype=torch.float64)
        batch = environments(state, items, torch.full((len(chunk),), GIBBS), zero, score_hidden=True)
        out[:, chunk] = torch.stack(state.system.prior.total_and_strain(batch, batch.target)).numpy()
    return out[0], out[1], out[2]


def environments(
    state: FrameState, items: torch.Tensor, context: torch.Tensor, angle: torch.Tensor, score_hidden: bool
) -> Batch:
    """The local environments of steps `items` as the atoms stand, in `context`, turned by `angle`
    about their beads' frame axes (`environment.gather`), without unused step columns."""
    return trim(
        gather(
            state.plan,
            state.hood,
            state.positions,
            state.cg,
            state.box,
            items,
            context,
            angle,
            state.model.half_extent,
            score_hidden=score_hidden,
        )
    )


def trim(batch: Batch) -> Batch:
    """The batch without the step columns no item uses (gather pads to the longest step of all)."""
    n = int(batch.step_mask.sum(1).max())
    return dataclasses.replace(
        batch,
        channels=batch.channels[:, :n],
        sequence_channels=batch.sequence_channels[:, :n, :n],
        atom_types=batch.atom_types[:, :n],
        step_mask=batch.step_mask[:, :n],
        target=batch.target[:, :n],
        sequence_atoms=batch.sequence_atoms[:, :n],
    )


def _chunks(steps: np.ndarray, orientations: int) -> list[np.ndarray]:
    size = max(MAX_ITEMS // orientations, 1)
    return [steps[i : i + size] for i in range(0, len(steps), size)]
