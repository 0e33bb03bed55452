"""Backmapping: atomistic structures sampled from CG frames with a trained generator
(method.md sections 2 and 8).

One frame: a forward pass (heavy atoms, then hydrogens; rank by rank along every molecule's bead
order, all molecules in one batch per rank), then Gibbs sweeps that re-place every step seeing all
other atoms. In a Gibbs sweep, beads whose neighbourhoods overlap are never re-placed in the same
batch: the beads are coloured so that no two neighbours share a colour, and one colour is one
batch (chromatic Gibbs). Every item is generated under K turns about its frame axis, all in the
same batch, and the turn with the lowest local force-field energy with its surroundings is kept
(`RANKINGS`: by default the step's own bonded terms do not count: choosing the most ideal of K
shapes made sPS rings too flat at 568 K; the turn is chosen for its fit), among those that keep
the handedness of the chiral centres the model recorded from its training structures (`stereo`:
the force field cannot tell mirror images apart; atoms not yet placed stand at their beads, so
the forward pass decides a centre's handedness when the first of its atoms is placed). In the
forward pass, each candidate is first translated as a whole so that its bonds to atoms already in place come out
at b0 on average: the generated shape is kept, and the joints between beads, which carry the
backbone dihedral, are right before the ranking sees them. Where the reference
ensemble has constrained bonds, generated bond lengths are restored to their constraints once,
over the whole frame, after the last sweep, keeping the generated shape (`constraints.restore_bonds`).
(Projecting after every batch instead, moving only the atoms just placed, tripled the angle energy
of sPS frames and left clashes: the generator then builds on environments the projection has bent.)

Between the sweeps and that restoration, repair rounds re-place, under `REPAIR_ORIENTATIONS`
turns, the beads with a strained contact (one Lennard-Jones pair above `STRAINED_PAIR`) or a bent
joint (one angle or dihedral term above `STRAINED_TERM`) and, in the
first `OUTLIER_ROUNDS`, those with a step whose energy is an outlier among the copies of the same
step in other molecules (`repair_steps`): about one bead in five of an sPS frame ends the sweeps
strained (an angle bent by 40 degrees, a methine hydrogen 0.18 nm from a ring carbon), and these few
carry most of the excess angle and Lennard-Jones energy. Energies are judged as the atoms stand
before each round, hydrogens included, and a repaired bead's heavy atoms are ranked seeing its
molecule's other hydrogens, which the network does not see: the strained contacts are mostly
between a bead's heavy atoms and a neighbouring bead's hydrogens, invisible to a Gibbs heavy-atom
move. Each colour of repaired beads is re-placed whole (heavy atoms, then hydrogens) before the next,
so no bead is ranked against hydrogens left where their heavy atoms were. A round can also strain
what was not: a ring is ranked with its hydrogens hidden, and the hydrogens then follow the ring
(all 71 held-out sPS frames at 568 K: one H-H pair at 0.064 nm after the last round). So the frame
kept is the least strained one the rounds pass through, strain being the summed excess of the
contacts over `STRAINED_PAIR` and of the terms over `STRAINED_TERM`. Hydrogens of the forward
pass are tried under at most `FORWARD_HYDROGEN_ORIENTATIONS` turns.

Last, after the bond restoration, every recorded chiral centre still in its mirror image is
reflected, with its hydrogen, through the plane of its heavy neighbours (`StereoCheck.mirror_inverted`:
its bonds keep their lengths; a centre left nearly flat is lifted off that plane, so that the
0.001 nm rounding of .xtc files cannot invert it). The side groups around it, built for the
inverted form, and the hydrogens of the beads that own it and its neighbours are then re-placed
(`mirror_schedule`), and the bonds of the re-placed atoms restored with every other atom held (sPS
at 568 K, 3 frames: 2-6 centres mirrored per frame; re-placing the phenyl rings too, not only the
hydrogens, lowered the LJ energy by 130-520 kJ/mol and the angle energy by 160-290). Preferring
candidates that keep the handedness is not enough: where the generator builds a centre's whole
neighbourhood around the inverted form, every candidate inverts it again (sPS at 568 K: 3-6 centres
of 324 per frame after the sweeps and repair rounds, which re-placing them whole did not lower).

Very last, Metropolis sweeps with the force field at the frames' temperature turn small groups
of atoms (hydrogens; atoms with their side groups about two of their neighbours; side groups about
the atom they hang from), bond lengths kept and bead centres restrained to the CG frame
(`thermal`; what moves: `THERMAL`). The generator places atoms on a 0.15 nm grid and draws the
right shapes with the wrong thermal spread: on sPS it leaves ring hydrogens and ring carbons nearly
ideal and the backbone angles and dihedrals too strained, which the force field corrects exactly.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .constraints import Constraints, bond_constraints, moving_only, restore_bonds
from .energies import ForceField
from .environment import (
    FORWARD,
    GIBBS,
    Batch,
    Neighbourhood,
    SystemPlan,
    gather,
    graph_colours,
    neighbourhood,
    plan_system,
)
from .errors import InputError
from .mapping import Mapping, read_mapping
from .model import DeepBackmapModel, load_model, resolve_model
from .pbc import minimum_image
from .prior import LocalPrior
from .stereo import StereoCheck, system_stereo
from .structure import Frame, check_frames, iter_frames, load_universe, write_frames
from .thermal import DEFAULT_SWEEPS as DEFAULT_THERMAL_SWEEPS
from .thermal import NEIGHBOUR_SKIN, SELECTIONS, ThermalMoves, thermal_moves, thermalise
from .topology import Topology, read_topology, system_residue_numbers
from .training import environment_densities, reach, rollout, to_device

DEFAULT_ORIENTATIONS = 6
DEFAULT_GIBBS_SWEEPS = 2
DEFAULT_REPAIR_ROUNDS = 5
# Turns per forward-pass hydrogen step: the first sweep re-places every hydrogen before any other
# hydrogen sees it; meanwhile they only shape other molecules' heavy atoms. Fewer turns there pay
# for about half of the repair rounds' cost (an sPS frame: 4 s of 60; not worse on the frame compared).
FORWARD_HYDROGEN_ORIENTATIONS = 2
REPAIR_ORIENTATIONS = 8
OUTLIER_MADS = 3.0  # a step's energy this many (scaled) median absolute deviations above its template's median
OUTLIER_FLOOR = 1.0  # kJ/mol: the least deviation counted as one MAD (templates whose copies agree closely)
MIN_COPIES = 8  # templates with fewer copies in the system are never called outliers
# kJ/mol: one Lennard-Jones pair this high is a strained contact (sPS at 568 K: 1 reference chain in
# 360 has a pair above 30; sampled frames had one in five, mostly methine H against a ring carbon).
STRAINED_PAIR = 25.0
# kJ/mol: one angle or dihedral term this high is a bent joint (sPS: the most in 10 reference frames is
# 36 at 568 K and 18 at 313 K; sampled 568 K frames had 1-19 above 40, at backbone junctions, and one
# such frame stopped MD on LINCS warnings).
STRAINED_TERM = 40.0
OUTLIER_ROUNDS = 3  # repair rounds that also re-place energy outliers; later ones only strained steps
MAX_ITEMS = 512  # items (orientations included) per network call: bounds memory, not results
# What the choice among turns minimises: "environment", the energy of the step with its
# surroundings (Lennard-Jones and the bonded terms that join it to atoms in place; its own bonded
# terms are left as generated), or "all", that plus the step's own bonds, angles and dihedrals.
RANKINGS = ("environment", "all")
DEFAULT_RANKING = "environment"
# What the last stage moves at the CG frames' temperature (`thermal.SELECTIONS`), or "none".
THERMAL = (*SELECTIONS, "none")
DEFAULT_THERMAL = "groups"
# Arithmetic of the generator's convolutions: "bfloat16" (float32 sums of bfloat16 products) halves
# the sampler's network time on CPUs with bfloat16 units (an sPS frame on 2 Sapphire Rapids cores:
# the generator 2.1x faster, densities within 5e-4 of float32) and is 15-50x slower without them;
# "auto" picks it where the CPU has them, float32 elsewhere (CUDA included: not measured there).
PRECISIONS = ("auto", "float32", "bfloat16")
DEFAULT_PRECISION = "auto"


# --------------------------------------------------------------------------- whole molecules


def unwrap_levels(topology: Topology) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(atoms, their parents) per breadth-first level of every molecule's bond graph.

    Each molecule is walked from its first atom; atoms it cannot reach (fragments without bonds to
    the rest) hang from the first atom. Parents always lie one level up.
    """
    local = {name: _bfs_parents(m.n_atoms, m.bonds) for name, m in topology.molecule_types.items()}
    atoms, parents, levels = [], [], []
    for name, start in topology.molecules:
        parent, level = local[name]
        child = np.flatnonzero(level > 0)
        atoms.append(child + start)
        parents.append(parent[child] + start)
        levels.append(level[child])
    atoms_all, parents_all, levels_all = (np.concatenate(a) for a in (atoms, parents, levels))
    return [
        (torch.from_numpy(atoms_all[levels_all == k]), torch.from_numpy(parents_all[levels_all == k]))
        for k in range(1, int(levels_all.max(initial=0)) + 1)
    ]


def _bfs_parents(n_atoms: int, bonds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    neighbours: list[list[int]] = [[] for _ in range(n_atoms)]
    for a, b in np.asarray(bonds, dtype=np.int64).reshape(-1, 2).tolist():
        neighbours[a].append(b)
        neighbours[b].append(a)
    parent = np.full(n_atoms, -1, dtype=np.int64)
    level = np.full(n_atoms, -1, dtype=np.int64)
    for root in range(n_atoms):
        if level[root] >= 0:
            continue
        parent[root], level[root] = (0, 1) if root else (-1, 0)
        frontier = [root]
        while frontier:
            nxt = []
            for a in frontier:
                for b in neighbours[a]:
                    if level[b] < 0:
                        parent[b], level[b] = a, level[a] + 1
                        nxt.append(b)
            frontier = nxt
    return parent, level


def make_whole(
    positions: torch.Tensor, box: torch.Tensor, levels: list[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """Every atom moved to the image nearest its parent, level by level: molecules unbroken."""
    x = positions.clone()
    b = box.to(x)
    for atoms, parents in levels:
        x[atoms] = x[parents] + minimum_image(x[atoms] - x[parents], b)
    return x


# --------------------------------------------------------------------------- schedules


def forward_schedule(plan: SystemPlan) -> list[np.ndarray]:
    """Step batches of the forward pass: heavy phase, then hydrogens; in each, rank by rank."""
    rank = plan.bead_rank[plan.step_bead]
    return [
        np.flatnonzero((plan.step_heavy == heavy) & (rank == k))
        for heavy in (True, False)
        for k in np.unique(rank[plan.step_heavy == heavy])
    ]


def gibbs_schedule(plan: SystemPlan, neighbours: torch.Tensor, steps: np.ndarray | None = None) -> list[np.ndarray]:
    """Step batches of one Gibbs sweep over `steps` (default: all): heavy phase, then hydrogens.

    In each phase, steps of one length are coloured among themselves (`graph_colours` on the bead
    neighbourhood graph) and one colour is one batch: no batch pads short steps to long ones.
    """
    chosen = np.zeros(len(plan.step_bead), dtype=bool)
    chosen[slice(None) if steps is None else steps] = True
    batches = []
    for heavy in (True, False):
        phase = np.flatnonzero((plan.step_heavy == heavy) & chosen)
        for length in np.unique(plan.step_length[phase]):
            members = phase[plan.step_length[phase] == length]
            colour = graph_colours(neighbours, plan.step_bead[members])
            batches += [members[colour == k] for k in np.unique(colour)]
    return batches


# --------------------------------------------------------------------------- one frame


def native_bfloat16(device: str | torch.device) -> bool:
    """Whether `device` is a CPU with bfloat16 units (AVX512-BF16 or AMX)."""
    cpu = torch.cpu
    return torch.device(device).type == "cpu" and any(
        getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )


def uses_bfloat16(precision: str, device: str | torch.device) -> bool:
    """Whether the generator runs under bfloat16 autocast for `precision` (`PRECISIONS`) on `device`."""
    if precision not in PRECISIONS:
        raise InputError(f"precision '{precision}': expected one of {', '.join(PRECISIONS)}")
    return precision == "bfloat16" or (precision == "auto" and native_bfloat16(device))


@dataclass
class _FrameState:
    """What every placement batch of one frame reads and writes."""

    model: DeepBackmapModel
    plan: SystemPlan
    prior: LocalPrior
    stereo: StereoCheck
    hood: Neighbourhood
    cg: torch.Tensor
    box: torch.Tensor
    positions: torch.Tensor  # (N, 3) float64, every atom near its owner bead
    angles: torch.Generator
    device: torch.device
    ranking: str
    noise_scale: float
    bfloat16: bool


def _standing_energies(state: _FrameState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S,) local energy of every step's atoms where they stand now, each seeing every other atom
    (hydrogens included), (S,) the energy of each step's worst Lennard-Jones pair and (S,) of its
    worst angle or dihedral term, kJ/mol (`LocalPrior.total_and_strain`)."""
    out = np.empty((3, len(state.plan.step_bead)))
    for chunk in _chunks(np.arange(out.shape[1]), 1):
        items = torch.from_numpy(chunk)
        batch = _trim(
            gather(
                state.plan,
                state.hood,
                state.positions,
                state.cg,
                state.box,
                items,
                torch.full((len(chunk),), GIBBS),
                torch.zeros(len(chunk), dtype=torch.float64),
                state.model.half_extent,
                score_hidden=True,
            )
        )
        out[:, chunk] = torch.stack(state.prior.total_and_strain(batch, batch.target)).numpy()
    return out[0], out[1], out[2]


def _place(state: _FrameState, steps: np.ndarray, context: int, k: int, score_hidden: bool = False) -> None:
    """Generate the steps under k turns each and write to the frame the lowest-energy turn (energy
    as `state.ranking` says) of those that invert or flatten the fewest recorded chiral centres.
    `score_hidden`: see `gather`."""
    model, plan = state.model, state.plan
    n = len(steps)
    items = torch.from_numpy(steps).repeat_interleave(k)
    offset = torch.rand(n, 1, generator=state.angles, dtype=torch.float64) * 2 * math.pi
    angle = (offset + torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)).reshape(-1)
    batch = _trim(
        gather(
            plan,
            state.hood,
            state.positions,
            state.cg,
            state.box,
            items,
            torch.full((n * k,), context),
            angle,
            model.half_extent,
            score_hidden=score_hidden,
        )
    )
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
        local = local + state.prior.junction_shift(batch, local)[:, None]
    energy = sum(state.prior.energies(batch, local, internal=state.ranking == "all").values()).view(n, k)
    placed = batch.to_box_frame(local)
    inverted = state.stereo.inverted(batch.steps, batch.sequence_atoms, placed, state.positions, state.box).view(n, k)
    energy = torch.where(inverted == inverted.min(1, keepdim=True).values, energy, torch.inf)
    chosen = torch.arange(n) * k + energy.argmin(1)
    atoms = batch.sequence_atoms[chosen]
    present = atoms >= 0
    state.positions[atoms[present]] = placed[chosen][present]


def _trim(batch: Batch) -> Batch:
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


def step_templates(plan: SystemPlan) -> np.ndarray:
    """(S,) template of each step: steps of the same bead of the same molecule type in the same
    phase (heavy or hydrogen) share one, so their energies are comparable."""
    key = np.stack(
        [plan.molecule_type[plan.bead_molecule[plan.step_bead]], plan.bead_rank[plan.step_bead], plan.step_heavy], 1
    )
    return np.unique(key, axis=0, return_inverse=True)[1].reshape(-1)


def outlier_steps(energy: np.ndarray, templates: np.ndarray, mads: float = OUTLIER_MADS) -> np.ndarray:
    """(S,) bool: steps whose energy lies more than `mads` scaled median absolute deviations (at
    least `OUTLIER_FLOOR`) above the median of their template's copies; templates with fewer than
    `MIN_COPIES` copies have none."""
    out = np.zeros(len(energy), dtype=bool)
    for t in np.unique(templates):
        members = templates == t
        if members.sum() < MIN_COPIES:
            continue
        e = energy[members]
        median = np.median(e)
        spread = max(1.4826 * float(np.median(np.abs(e - median))), OUTLIER_FLOOR)
        out[members] = e > median + mads * spread
    return out


def repair_steps(
    energy: np.ndarray, worst_pair: np.ndarray, worst_term: np.ndarray, templates: np.ndarray, outliers_too: bool
) -> np.ndarray:
    """(S,) bool: steps with a strained contact (`STRAINED_PAIR`) or bent term (`STRAINED_TERM`)
    and, if `outliers_too`, energy outliers among their template's copies (`outlier_steps`)."""
    strained = (worst_pair > STRAINED_PAIR) | (worst_term > STRAINED_TERM)
    return strained | outlier_steps(energy, templates, OUTLIER_MADS) if outliers_too else strained


def repair_schedule(plan: SystemPlan, neighbours: torch.Tensor, chosen: np.ndarray) -> list[np.ndarray]:
    """Batches of every step of the beads with a `chosen` step (see `repair_steps`; a strained
    hydrogen step often hangs on strained heavy atoms, re-placed heavy atoms need their hydrogens), the
    beads coloured among themselves and re-placed colour by colour, heavy atoms then hydrogens:
    each bead is placed among complete, current neighbours (no hydrogen left where heavy atoms
    moved). Steps of different lengths share a batch (padded steps are not generated): strained
    beads are few but need many colours in a dense system, so one batch per colour and phase."""
    beads = np.unique(plan.step_bead[chosen])
    if not len(beads):
        return []
    colour = np.full(len(plan.bead_rank), -1)
    colour[beads] = graph_colours(neighbours, beads)
    step_colour = colour[plan.step_bead]
    batches = [
        np.flatnonzero((step_colour == c) & (plan.step_heavy == heavy))
        for c in np.unique(colour[beads])
        for heavy in (True, False)
    ]
    return [steps for steps in batches if len(steps)]


def mirror_schedule(
    plan: SystemPlan, neighbours: torch.Tensor, atoms: np.ndarray, centres: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(heavy, hydrogen) batches to re-place around mirrored centres (`atoms` (M, 4), see
    `StereoCheck.mirror_inverted`; `centres`: every recorded centre): the heavy steps of the beads
    that own a neighbour of a mirrored centre but no centre at all (sPS: the phenyl ring, oriented
    for the inverted form, which left the methine hydrogen eclipsing an ortho ring atom), then the
    hydrogen steps of the beads that own any of `atoms`. Beads that own a centre keep their heavy
    atoms: moving them could invert it."""
    side = np.setdiff1d(plan.atom_owner[atoms[:, 1:]], plan.atom_owner[centres])
    owners = np.unique(plan.atom_owner[atoms])
    heavy = np.flatnonzero(np.isin(plan.step_bead, side) & plan.step_heavy)
    hydrogens = np.flatnonzero(np.isin(plan.step_bead, owners) & ~plan.step_heavy)
    return gibbs_schedule(plan, neighbours, heavy), gibbs_schedule(plan, neighbours, hydrogens)


def _chunks(steps: np.ndarray, orientations: int) -> list[np.ndarray]:
    size = max(MAX_ITEMS // orientations, 1)
    return [steps[i : i + size] for i in range(0, len(steps), size)]


def backmap_frame(
    model: DeepBackmapModel,
    plan: SystemPlan,
    prior: LocalPrior,
    cg: np.ndarray,
    box: np.ndarray,
    *,
    gibbs_sweeps: int = DEFAULT_GIBBS_SWEEPS,
    orientations: int = DEFAULT_ORIENTATIONS,
    repair_rounds: int = DEFAULT_REPAIR_ROUNDS,
    ranking: str = DEFAULT_RANKING,
    noise_scale: float = 1.0,
    generator: torch.Generator | int = 0,
    device: str | torch.device = "cpu",
    constraints: Constraints | None = None,
    stereo: StereoCheck | None = None,
    thermal: ThermalMoves | None = None,
    temperature: float | None = None,
    thermal_sweeps: int = DEFAULT_THERMAL_SWEEPS,
    precision: str = DEFAULT_PRECISION,
    progress: Callable[[int], object] | None = None,
    stages: Callable[[str, np.ndarray], object] | None = None,
) -> np.ndarray:
    """Atom positions (N, 3) nm sampled for one CG frame (cg (M, 3) nm, box rows (3, 3) nm).

    `plan` must be built with the model's feature layout. After the sweeps, up to `repair_rounds`
    rounds re-place the strained beads (`repair_steps`, `repair_schedule`) under
    `REPAIR_ORIENTATIONS` turns (a round with none ends them). `ranking` (`RANKINGS`): which
    energy picks the turn. `noise_scale` multiplies the generator's noise (`noise_scale_for`).
    `generator` (or a seed) fixes every random
    choice: the same seed gives the same structure; the global RNG state is left untouched.
    `constraints` (see `bond_constraints`): bond lengths restored to them, None: left as
    generated. `stereo`: chiral centres whose handedness candidates must keep and that end in it
    (see `StereoCheck`), None: not checked. `thermal` (see `thermal.thermal_moves`): moved last by
    `thermal_sweeps` Metropolis sweeps at `temperature` (K), bead centres restrained to `cg`; None: no
    such stage. `precision` (`PRECISIONS`): the generator's arithmetic.
    `progress` is called with the number of atoms placed
    after every batch; `stages` (for diagnostics) with a name and a copy of the positions after the
    forward pass ("forward"), each sweep ("sweep 1", ...), each repair round ("repair 1", ...), the
    bond restoration ("bonds restored"), where centres were inverted, the re-placement of the
    side groups around them ("side groups re-placed") and of their hydrogens ("centres mirrored"),
    and the Metropolis sweeps ("thermalised").
    Atoms lie near their owner beads, so molecules may be broken across the box (see `make_whole`).
    """
    if orientations < 1 or gibbs_sweeps < 0 or repair_rounds < 0 or thermal_sweeps < 0 or not noise_scale >= 0:
        raise InputError(
            "need orientations >= 1, gibbs_sweeps >= 0, repair_rounds >= 0, thermal_sweeps >= 0 and "
            f"noise_scale >= 0 (got {orientations}, {gibbs_sweeps}, {repair_rounds}, {thermal_sweeps}, "
            f"{noise_scale})"
        )
    if ranking not in RANKINGS:
        raise InputError(f"ranking '{ranking}': expected one of {', '.join(RANKINGS)}")
    if thermal is not None and not (temperature is not None and temperature > 0):
        raise InputError(f"temperature {temperature}: the Metropolis sweeps need a positive number of kelvin")
    gen = generator if isinstance(generator, torch.Generator) else torch.Generator().manual_seed(int(generator))
    device = torch.device(device)
    if device.type == "cpu":
        model.generator.to(memory_format=torch.channels_last_3d)  # 3D convolutions 1.3-1.6x faster on CPU
    cg_t, box_t = torch.as_tensor(cg, dtype=torch.float64), torch.as_tensor(box, dtype=torch.float64)
    hood = neighbourhood(plan, cg, box, reach(model.half_extent))
    stereo = stereo or StereoCheck(plan, np.zeros((0, 4), dtype=np.int64), np.zeros(0))
    state = _FrameState(
        model,
        plan,
        prior,
        stereo,
        hood,
        cg_t,
        box_t,
        cg_t[torch.from_numpy(plan.atom_owner)].clone(),
        gen,
        device,
        ranking,
        noise_scale,
        uses_bfloat16(precision, device),
    )
    sweep = gibbs_schedule(plan, hood.beads)
    passes = [("forward", forward_schedule(plan), FORWARD)] + [
        (f"sweep {k + 1}", sweep, GIBBS) for k in range(gibbs_sweeps)
    ]
    templates = step_templates(plan)

    def run(name: str, schedule: list[np.ndarray], context: int, k: int, score_hidden: bool = False) -> None:
        for steps in schedule:
            turns = min(k, FORWARD_HYDROGEN_ORIENTATIONS) if context == FORWARD and not plan.step_heavy[steps[0]] else k
            for chunk in _chunks(steps, turns):
                _place(state, chunk, context, turns, score_hidden)
                if progress is not None:
                    progress(int(plan.step_length[chunk].sum()))
        if stages is not None:
            stages(name, state.positions.numpy().copy())

    noise_seed = int(torch.randint(2**62, (1,), generator=gen))
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        torch.manual_seed(noise_seed)
        for name, schedule, context in passes:
            run(name, schedule, context, orientations)
        least = None  # the least strained frame the repair rounds leave: (strain, positions)
        for k in range(repair_rounds + 1):
            energy, pair, term = _standing_energies(state)
            strain = np.clip(pair - STRAINED_PAIR, 0, None).sum() + np.clip(term - STRAINED_TERM, 0, None).sum()
            if least is None or strain <= least[0]:
                least = (strain, state.positions.clone())
            chosen = repair_steps(energy, pair, term, templates, k < OUTLIER_ROUNDS)
            schedule = repair_schedule(plan, hood.beads, chosen)
            if k == repair_rounds or not schedule:
                break
            run(f"repair {k + 1}", schedule, GIBBS, REPAIR_ORIENTATIONS, score_hidden=True)
        state.positions = least[1]
        if constraints is not None:
            state.positions = restore_bonds(state.positions, box_t, constraints)
            if stages is not None:
                stages("bonds restored", state.positions.numpy().copy())
        mirrored = state.stereo.mirror_inverted(state.positions, box_t)
        if len(mirrored):
            heavy, light = mirror_schedule(plan, hood.beads, mirrored, state.stereo.atoms[:, 0].numpy())
            run("side groups re-placed", heavy, GIBBS, orientations, score_hidden=True)
            run("centres mirrored", light, GIBBS, orientations)
            if constraints is not None and heavy + light:  # the re-placed atoms onto their bonds, the rest held
                moved = plan.step_atoms[np.concatenate(heavy + light)]
                state.positions = restore_bonds(state.positions, box_t, moving_only(constraints, moved[moved >= 0]))
            state.stereo.mirror_inverted(state.positions, box_t)  # a re-placed neighbour may invert one again
        if thermal is not None:
            state.positions = torch.from_numpy(
                thermalise(state.positions, box, thermal, temperature, thermal_sweeps, generator=gen, cg=cg)
            )
            if stages is not None:
                stages("thermalised", state.positions.numpy().copy())
    return state.positions.numpy()


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class SystemParts:
    """What sampling a system needs besides its CG frames: built once, used for every frame."""

    plan: SystemPlan
    prior: LocalPrior
    stereo: StereoCheck
    constraints: Constraints | None
    thermal: ThermalMoves | None


def prepare_system(
    model: DeepBackmapModel,
    topology: Topology,
    mapping: Mapping,
    constrain: bool = True,
    thermal: str = DEFAULT_THERMAL,
) -> SystemParts:
    """The plan, energy prior, chiral-centre check, (if `constrain`) bond constraints and the
    moves of the last stage (`THERMAL`) of a system for `backmap_frame`."""
    if thermal not in THERMAL:
        raise InputError(f"thermal '{thermal}': expected one of {', '.join(THERMAL)}")
    plan = plan_system(topology, mapping, model.layout)
    centres, signs, hydrogens = system_stereo(topology, model.stereo)
    moves = (
        None if thermal == "none" else thermal_moves(topology, ForceField(topology), thermal, mapping, (centres, signs))
    )
    return SystemParts(
        plan,
        LocalPrior(topology, plan),
        StereoCheck(plan, centres, signs, hydrogens),
        bond_constraints(topology) if constrain else None,
        moves,
    )


def noise_scale_for(model: DeepBackmapModel, temperature: float | None, path: str | os.PathLike | None = None) -> float:
    """How much to scale the generator's noise to sample at `temperature` (K): sqrt(T / T_train),
    T_train the temperature of the model's training frames (its config's `temperature`). Thermal
    displacements along stiff (harmonic) coordinates grow as sqrt(T), so a generator whose noise
    carries them draws a colder or hotter spread with it; the CG frame sets everything else.
    None: the noise as trained (1). `path`: the model file, named in errors."""
    if temperature is None:
        return 1.0
    trained = model.training.get("temperature")
    if trained is None:
        raise InputError(
            "the model does not record the temperature of its training frames "
            "(training config key `temperature`), so it cannot be sampled at another one",
            path,
        )
    if not temperature > 0:
        raise InputError(f"temperature {temperature}: expected a positive number of kelvin")
    return math.sqrt(temperature / trained)


def frames_temperature(
    model: DeepBackmapModel, temperature: float | None, thermal: str, path: str | os.PathLike | None = None
) -> float | None:
    """The temperature (K) of the CG frames: `temperature`, else that of the model's training
    frames. Needed unless `thermal` is "none"; `path`: the model file, named in errors."""
    kelvin = model.training.get("temperature") if temperature is None else temperature
    if kelvin is None and thermal != "none":
        raise InputError(
            "the last stage samples at the temperature of the CG frames, and the model does not "
            "record that of its training frames: give --temperature (or --thermal none)",
            path,
        )
    return kelvin


def _growing(bar) -> Callable[[int], None]:
    """A progress callback for a bar whose total covers the forward pass and sweeps: the repair
    rounds, of a size known only as they run, extend it."""

    def update(n: int) -> None:
        if bar.n + n > bar.total:
            bar.total = bar.n + n
        bar.update(n)

    return update


def frame_seed(seed: int, frame: int) -> int:
    """The seed of one frame: depends on the run's seed and the frame's index only, so a frame
    comes out the same whichever other frames are selected."""
    return int(np.random.SeedSequence([seed, frame]).generate_state(1, np.uint64)[0] >> 1)


def backmap(
    structure: str | os.PathLike,
    topology: str | os.PathLike,
    output: str | os.PathLike,
    *,
    trajectory: str | os.PathLike | None = None,
    mapping: str | os.PathLike | list | tuple | None = None,
    model: str | os.PathLike = "sps-568",
    frames: slice = slice(None),
    seed: int = 0,
    device: str = "cpu",
    gibbs_sweeps: int = DEFAULT_GIBBS_SWEEPS,
    orientations: int = DEFAULT_ORIENTATIONS,
    repair_rounds: int = DEFAULT_REPAIR_ROUNDS,
    ranking: str = DEFAULT_RANKING,
    temperature: float | None = None,
    thermal: str = DEFAULT_THERMAL,
    thermal_sweeps: int = DEFAULT_THERMAL_SWEEPS,
    precision: str = DEFAULT_PRECISION,
    scale_noise: bool = False,
    constrain: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    allow_renamed: bool = False,
) -> int:
    """Backmap CG frames (a structure, or a trajectory with it) and write the atomistic frames
    (topology atom names and order, molecules whole, CG box kept); returns the number of frames.
    `temperature` (K): that of the CG frames (`frames_temperature`; default: the model's training
    frames'), at which the last stage moves the `thermal` atoms (`THERMAL`) in `thermal_sweeps`
    Metropolis sweeps; `scale_noise`: the
    generator's noise scaled to it too (`noise_scale_for`); `precision`: see `PRECISIONS`;
    `allow_renamed`: beads named otherwise than in the mapping only warned about (`check_names`)."""
    from tqdm import tqdm

    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device available")
    uses_bfloat16(precision, device)  # checked before any file is read
    universe = load_universe(structure, trajectory)  # a malformed file stops before the model loads
    net = load_model(model, device)
    top = read_topology(topology)
    cg_map = read_mapping(mapping or None, top)
    path = resolve_model(model)
    net.check_system(top, cg_map, path)
    noise_scale = noise_scale_for(net, temperature, path) if scale_noise else 1.0
    kelvin = frames_temperature(net, temperature, thermal, path)
    n_frames = check_frames(
        universe,
        cg_map.n_beads,
        frames,
        output,
        f"the CG mapping of the topology {topology}",
        names=(cg_map.bead_names, cg_map.bead_residue_names),
        cutoff=ForceField(top).cutoff + NEIGHBOUR_SKIN,  # the widest pair search: the thermal stage's
        allow_renamed=allow_renamed,
    )

    system = prepare_system(net, top, cg_map, constrain, thermal)
    levels = unwrap_levels(top)
    per_frame = int(system.plan.step_length.sum()) * (1 + gibbs_sweeps)
    disable = None if progress else True  # None: tqdm shows bars on terminals only
    written = []
    with tqdm(total=n_frames, unit="frame", desc="backmap", disable=disable) as frames_bar:
        for cg in iter_frames(universe, frames):
            if not (np.diag(cg.box) > 0).all():
                raise InputError(f"frame {cg.step} has no periodic box", trajectory or structure)
            with tqdm(total=per_frame, unit="atom", desc=f"frame {cg.step}", leave=False, disable=disable) as bar:
                x = backmap_frame(
                    net,
                    system.plan,
                    system.prior,
                    cg.positions,
                    cg.box,
                    gibbs_sweeps=gibbs_sweeps,
                    orientations=orientations,
                    repair_rounds=repair_rounds,
                    ranking=ranking,
                    noise_scale=noise_scale,
                    generator=frame_seed(seed, cg.step),
                    device=device,
                    constraints=system.constraints,
                    stereo=system.stereo,
                    thermal=system.thermal,
                    temperature=kelvin,
                    thermal_sweeps=thermal_sweeps,
                    precision=precision,
                    progress=_growing(bar),
                )
            whole = make_whole(torch.from_numpy(x), torch.from_numpy(cg.box), levels).numpy()
            written.append(Frame(whole, cg.box, cg.time, cg.step))
            frames_bar.update(1)
    write_frames(output, top.atom_names, top.residue_names, system_residue_numbers(top), written, overwrite)
    return n_frames
