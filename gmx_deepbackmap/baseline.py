"""The geometric baseline (Wassenaar et al. 2014, "backward"; method.md section 6): CG frames back to
atomistic ones by geometry and energy minimisation, the reference DeepBackmap is compared with.

Per frame:

1. Placement. Every atom goes to the weighted average of the beads whose `[ members ]` list it
   (weights: its normalised weight in each bead); the beads are taken at their minimum image
   relative to the atom's owner bead, and an atom no bead lists sits on its owner bead. Molecules
   are then made whole along their bonds.
2. Modifiers. The mapping's `[ modifiers ]` lines, in file order, each re-place their first atom
   exactly; their geometry is defined in topologies/MAPPING.md and implemented in
   `modifier_position`. Bond lengths and angles come from the topology. Then the atoms that no
   modifier line names get a seeded Gaussian displacement (`displacement` nm per coordinate,
   backward's kick; 0 turns it off), which separates atoms left on one point. Atoms the modifiers
   place or use are not displaced: moving a reference moves everything built on it (a 0.05 nm kick
   on the sPS CH2 carbons put rings up to 0.4 nm off their beads), and kicking placed atoms flips
   chiral centres (a fifth of the sPS CH carbons). The bundled sPS modifiers name every atom, so
   the sPS baseline is deterministic.
3. Minimisation. GROMACS steepest descent with the bundled `sps/em.mdp` settings: 200 steps with
   non-bonded interactions off, then 5,000 steps with everything on (no MD afterwards). GROMACS 2022
   cannot exclude energy groups with the Verlet scheme, so the first stage runs on a self-contained
   copy of the user's topology (`write_bonded_only_topology`) in which every Lennard-Jones
   parameter and every charge is zero. Between the stages, non-excluded atoms closer than
   `MIN_SEPARATION` are pushed apart to it (`separate_overlaps`): in single precision the forces of
   nearly coincident atoms overflow, and GROMACS then stops the minimisation at once ("force ... not
   finite"), which happened in half of the sPS test frames without this guard.

The seed of a frame depends only on `seed` and the frame's index (`frames.frame_seed`), so a frame
comes out the same whichever other frames are selected.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import gromacs
from .bundled import bundled_path, read_mdp, write_mdp
from .errors import InputError
from .frames import FrameOutput, FrameSource, frame_seed, run_frames
from .mapping import Mapping, read_mapping
from .mdp import topology_options
from .pbc import make_whole, minimum_image, neighbour_pairs, unwrap_levels
from .preprocess import preprocess
from .structure import Frame, read_frames, write_frames
from .topology import Topology, read_topology, system_residue_numbers

PathLike = str | os.PathLike

DEFAULT_DISPLACEMENT = 0.05  # nm, standard deviation per coordinate (backward's default kick)
BONDED_STEPS = 200  # steepest-descent steps without non-bonded interactions (the paper's setting)
FULL_STEPS = 5000  # steepest-descent steps with everything on
EM_TEMPLATE = "sps/em.mdp"
TETRAHEDRAL_HALF = math.acos(-1.0 / 3.0) / 2  # half the tetrahedral angle, 54.74 degrees
MIN_SEPARATION = 0.05  # nm: closest non-excluded approach allowed at the start of the full minimisation
SEPARATION_PASSES = 5


# --------------------------------------------------------------------------- modifiers


@dataclass(frozen=True)
class ModifierStep:
    """One `[ modifiers ]` line, resolved for every molecule of its type (applied to all at once)."""

    line: str  # as written, for messages
    kind: str  # cis, trans, out or chiral
    atoms: np.ndarray  # (n_molecules, k) system atom indices, the atom to place first
    length: float  # nm, b0 of the bond between the first two atoms
    angle: float  # degrees, angle atom-centre-third atom (cis and trans only; nan otherwise)


def modifier_position(kind: str, references: np.ndarray, length: float, angle: float = math.nan) -> np.ndarray:
    """Where a modifier puts its atom `a`, for n molecules at once (nm).

    `references` (n, k - 1, 3) holds the positions of the other atoms of the line in order: the
    centre b, then c, d (and e). `a` goes to distance `length` from b, in the direction
    - cis / trans: angle a-b-c = `angle`, dihedral a-b-c-d = 0 / 180 degrees;
    - out: minus the sum of the unit vectors b->c (and b->d);
    - chiral with c, d: the ideal tetrahedral position around b that makes the signed volume
      (c - b) . ((d - b) x (a - b)) positive;
    - chiral with c, d, e: minus the sum of the unit vectors b->c, b->d, b->e (the remaining
      tetrahedral position; the handedness is the one c, d and e already give).
    Degenerate input (coincident or collinear references) gives nan.
    """
    b = references[:, 0]
    unit = _unit(references[:, 1:] - b[:, None])
    if kind in ("cis", "trans"):
        side = references[:, 2] - references[:, 1]
        across = _unit(side - np.einsum("ni,ni->n", side, unit[:, 0])[:, None] * unit[:, 0])
        sign = 1.0 if kind == "cis" else -1.0
        theta = math.radians(angle)
        direction = math.cos(theta) * unit[:, 0] + sign * math.sin(theta) * across
    elif kind == "out" or unit.shape[1] == 3:
        direction = -unit.sum(1)
    else:
        bisector = _unit(-(unit[:, 0] + unit[:, 1]))
        normal = _unit(np.cross(unit[:, 0], unit[:, 1]))
        direction = math.cos(TETRAHEDRAL_HALF) * bisector + math.sin(TETRAHEDRAL_HALF) * normal
    return b + length * _unit(direction)


def _unit(v: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)


def modifier_steps(topology: Topology, mapping: Mapping) -> list[ModifierStep]:
    """Every molecule type's `[ modifiers ]`, in file order, with bond lengths and angles from the
    topology; a line whose first two atoms are not bonded (or, for cis/trans, without an angle
    a-b-c) is an error naming the mapping file."""
    geometry = _Geometry(topology)
    steps = []
    for name, molecule in mapping.molecule_types.items():
        firsts = np.array([start for n, start in topology.molecules if n == name], dtype=np.int64)
        names = topology.molecule_types[name].atom_names
        for modifier in molecule.modifiers:
            atoms = firsts[:, None] + np.array(modifier.atoms, dtype=np.int64)[None]
            line = " ".join([modifier.kind, *(names[i] for i in modifier.atoms)])
            try:
                length = geometry.bond(*atoms[0, :2])
                angle = geometry.angle(*atoms[0, :3]) if modifier.kind in ("cis", "trans") else math.nan
            except KeyError as missing:
                raise InputError(
                    f"modifier '{line}' of molecule type '{name}': {missing.args[0]}",
                    molecule.path,
                    section="modifiers",
                ) from None
            steps.append(ModifierStep(f"{line} ({name})", modifier.kind, atoms, length, angle))
    return steps


class _Geometry:
    """Bond lengths (b0) and angles (theta0) of the topology, looked up by system atom indices."""

    def __init__(self, topology: Topology):
        self.names = topology.atom_names
        pairs = np.concatenate([topology.bonds.indices, topology.constraints.indices]).reshape(-1, 2)
        lengths = np.concatenate([topology.bonds.params[:, 0], topology.constraints.params[:, 0]])
        self.bonds = {(min(i, j), max(i, j)): b0 for (i, j), b0 in zip(pairs.tolist(), lengths.tolist())}
        self.angles = {}
        for (i, j, k), theta in zip(topology.angles.indices.tolist(), topology.angles.params[:, 0].tolist()):
            self.angles[(i, j, k)] = self.angles[(k, j, i)] = theta

    def bond(self, a: int, b: int) -> float:
        key = (min(a, b), max(a, b))
        if key not in self.bonds:
            raise KeyError(f"{self.names[a]} and {self.names[b]} are not bonded in the topology")
        return self.bonds[key]

    def angle(self, a: int, b: int, c: int) -> float:
        """theta0 of the angle a-b-c; if there is none but a is bonded to b and c with an angle
        b-a-c, the angle at b of that triangle (e.g. a backbone atom between its two neighbours)."""
        if (a, b, c) in self.angles:
            return self.angles[(a, b, c)]
        if (b, a, c) not in self.angles:
            raise KeyError(
                f"no angle {self.names[a]}-{self.names[b]}-{self.names[c]} in the topology "
                f"(nor an angle {self.names[b]}-{self.names[a]}-{self.names[c]})"
            )
        p, q = self.bond(a, b), self.bond(a, c)
        gamma = math.radians(self.angles[(b, a, c)])
        return math.degrees(math.atan2(q * math.sin(gamma), p - q * math.cos(gamma)))


def apply_modifiers(positions: np.ndarray, steps: list[ModifierStep]) -> np.ndarray:
    """Positions (N, 3) of whole molecules with every modifier applied in order (a copy)."""
    x = positions.copy()
    for step in steps:
        placed = modifier_position(step.kind, x[step.atoms[:, 1:]], step.length, step.angle)
        bad = np.flatnonzero(~np.isfinite(placed).all(1))
        if len(bad):
            raise InputError(
                f"modifier '{step.line}' is degenerate at atom {step.atoms[bad[0], 0] + 1} (its "
                "reference atoms coincide or are collinear)"
            )
        x[step.atoms[:, 0]] = placed
    return x


# --------------------------------------------------------------------------- placement


def place_atoms(mapping: Mapping, beads: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Atom positions (N, 3) from bead positions (M, 3), nm: the weighted average of the beads that
    list each atom as a member, at their minimum image relative to the atom's owner bead; atoms
    no bead lists sit on their owner bead."""
    x = torch.as_tensor(beads, dtype=torch.float64)
    b = torch.as_tensor(box, dtype=torch.float64)
    owner = torch.as_tensor(mapping.atom_owner)
    atoms = torch.as_tensor(mapping.member_atoms)
    weights = torch.as_tensor(mapping.member_weights, dtype=torch.float64)
    d = minimum_image(x[torch.as_tensor(mapping.member_beads)] - x[owner[atoms]], b)
    total = torch.zeros(len(owner), dtype=torch.float64).index_add(0, atoms, weights)
    shift = torch.zeros(len(owner), 3, dtype=torch.float64).index_add(0, atoms, d * weights[:, None])
    return (x[owner] + shift / total.clamp(min=1e-300)[:, None]).numpy()


# --------------------------------------------------------------------------- minimisation


def write_bonded_only_topology(topology: PathLike, dest: PathLike) -> Path:
    """A self-contained copy of `topology` without non-bonded interactions, for the first
    minimisation stage: preprocessed as grompp does (includes expanded, `#ifdef`s and macros
    resolved), with V and W (LJ sigma/epsilon or C6/C12) of every `[ atomtypes ]` and
    `[ nonbond_params ]` line and every charge (`[ atomtypes ]`, and A and B state in `[ atoms ]`)
    set to zero. `[ pairs ]` keep explicit parameters: GROMACS counts them as bonded."""
    section = None
    out = []
    for line in preprocess(topology):
        words = line.text.split()
        if line.text.startswith("["):
            section = line.text.strip("[] \t").lower()
        elif section == "atomtypes":
            words[-4], words[-2], words[-1] = "0", "0", "0"
        elif section == "nonbond_params":
            words[3:5] = ["0", "0"]
        elif section == "atoms":
            for k in (6, 9):  # charge, chargeB
                if len(words) > k:
                    words[k] = "0"
        out.append(line.text if line.text.startswith("[") else " ".join(words))
    dest = Path(dest)
    header = f"; {topology} without LJ parameters and charges (gmx-deepbackmap baseline)"
    dest.write_text("\n".join([header, *out]) + "\n")
    return dest


def separate_overlaps(
    positions: np.ndarray, box: np.ndarray, excluded: np.ndarray, distance: float = MIN_SEPARATION
) -> np.ndarray:
    """Positions (N, 3) in which non-excluded atom pairs closer than `distance` (nm) have been pushed
    apart, each atom half the way along the pair's axis (a few passes; a copy). `excluded`: keys
    i * N + j (i < j) of the excluded pairs, sorted."""
    x = positions.copy()
    for _ in range(SEPARATION_PASSES):
        pairs, shifts = neighbour_pairs(x, box, distance)
        if len(excluded):
            keys = pairs[:, 0] * len(x) + pairs[:, 1]
            keep = excluded[np.searchsorted(excluded, keys).clip(max=len(excluded) - 1)] != keys
            pairs, shifts = pairs[keep], shifts[keep]
        d = x[pairs[:, 1]] - x[pairs[:, 0]] + shifts
        r = np.linalg.norm(d, axis=1)
        close = r < distance
        if not close.any():
            break
        pairs, d, r = pairs[close], d[close], r[close]
        axis = d / np.maximum(r, 1e-12)[:, None]
        axis[r == 0] = (1.0, 0.0, 0.0)  # coincident atoms: any direction separates them
        push = (distance - r)[:, None] / 2 * axis
        np.add.at(x, pairs[:, 0], -push)
        np.add.at(x, pairs[:, 1], push)
    return x


@dataclass(frozen=True)
class FrameTiming:
    """Wall time (s) of one frame: placement with modifiers, then the two minimisation stages."""

    placement: float
    em_bonded: float = 0.0
    em_full: float = 0.0

    @property
    def total(self) -> float:
        return self.placement + self.em_bonded + self.em_full


def em_mdp(mdp: PathLike | None, dest: Path, steps: int) -> Path:
    """A steepest-descent `.mdp` of `steps` steps: the user's `mdp` (its cut-offs, electrostatics,
    defines) made a minimisation, else the bundled `EM_TEMPLATE`."""
    if mdp is None:
        return write_mdp(bundled_path(EM_TEMPLATE), dest, nsteps=steps)
    em = read_mdp(bundled_path(EM_TEMPLATE))
    keys = ("integrator", "emtol", "emstep", "nstcalcenergy", "nstenergy", "nstlog", "nstxout", "constraints")
    return write_mdp(mdp, dest, nsteps=steps, continuation=None, **{key: em[key] for key in keys})


class _Minimiser:
    """The two minimisation stages for one system, with its inputs written once to `workdir`."""

    def __init__(self, topology: Topology, engine: gromacs.Engine, workdir: Path, mdp: PathLike | None = None):
        self.topology = topology
        self.engine = engine
        self.workdir = workdir
        self.bonded_top = write_bonded_only_topology(topology.path, workdir / "bonded-only.top")
        self.bonded_mdp = em_mdp(mdp, workdir / "em-bonded.mdp", BONDED_STEPS)
        self.full_mdp = em_mdp(mdp, workdir / "em-full.mdp", FULL_STEPS)
        self.residues = system_residue_numbers(topology)
        n = topology.n_atoms
        self.excluded = np.sort(topology.exclusions[:, 0] * n + topology.exclusions[:, 1])

    def run(self, positions: np.ndarray, box: np.ndarray, name: str) -> tuple[np.ndarray, float, float]:
        """Minimised positions and the wall time of each stage."""
        frame_dir = self.workdir / name
        frame_dir.mkdir()
        t0 = time.perf_counter()
        start = self._write(positions, box, frame_dir / "placed.gro")
        bonded = gromacs.minimise(start, self.bonded_top, self.bonded_mdp, frame_dir / "bonded.gro", self.engine)
        t1 = time.perf_counter()
        separated = separate_overlaps(read_frames(bonded)[0].positions, box, self.excluded)
        start = self._write(separated, box, frame_dir / "separated.gro")
        full = gromacs.minimise(start, self.topology.path, self.full_mdp, frame_dir / "full.gro", self.engine)
        t2 = time.perf_counter()
        return read_frames(full)[0].positions, t1 - t0, t2 - t1

    def _write(self, positions: np.ndarray, box: np.ndarray, path: Path) -> Path:
        top = self.topology
        write_frames(path, top.atom_names, top.residue_names, self.residues, [Frame(positions, box)])
        return path


# --------------------------------------------------------------------------- frames and files


@dataclass(frozen=True)
class BaselineSystem:
    """What placement needs of one system, resolved once: topology, mapping, modifiers, bond walk."""

    topology: Topology
    mapping: Mapping
    steps: list[ModifierStep]
    levels: list[tuple[torch.Tensor, torch.Tensor]]  # `pbc.unwrap_levels`: makes molecules whole
    unnamed: np.ndarray  # (N,) bool: atoms no modifier line names (the displacement moves these)

    @classmethod
    def from_topology(cls, topology: Topology, mapping: Mapping) -> BaselineSystem:
        steps = modifier_steps(topology, mapping)
        unnamed = np.ones(topology.n_atoms, dtype=bool)
        for step in steps:
            unnamed[step.atoms.ravel()] = False
        return cls(topology, mapping, steps, unwrap_levels(topology), unnamed)


def baseline_positions(system: BaselineSystem, cg: Frame, seed: int, displacement: float) -> np.ndarray:
    """Atom positions (N, 3) of one CG frame after placement, modifiers and displacement, molecules
    whole (no minimisation)."""
    x = place_atoms(system.mapping, cg.positions, cg.box)
    x = make_whole(torch.from_numpy(x), torch.from_numpy(cg.box), system.levels).numpy()
    x = apply_modifiers(x, system.steps)
    if displacement > 0:
        kick = np.random.default_rng(frame_seed(seed, cg.step)).normal(0.0, displacement, x.shape)
        x[system.unnamed] += kick[system.unnamed]
    return x


def baseline(
    structure: PathLike,
    topology: PathLike,
    output: PathLike,
    *,
    trajectory: PathLike | None = None,
    mapping: PathLike | list | tuple | None = None,
    frames: slice = slice(None),
    seed: int = 0,
    displacement: float = DEFAULT_DISPLACEMENT,
    minimise: bool = True,
    engine: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    timings: list[FrameTiming] | None = None,
    allow_renamed: bool = False,
    mdp: PathLike | None = None,
) -> int:
    """Backmap CG frames (a structure, or a trajectory with it) with the geometric baseline and
    write them (topology atom names and order, molecules whole, CG box kept); returns the number
    of frames. Prints the mean wall time per frame; `timings`, if given, receives each frame's.
    `allow_renamed`: beads named otherwise than in the mapping only warned about (`check_names`).
    `mdp`: the force field's settings for the minimisation (cut-offs, electrostatics, defines;
    default: the bundled `EM_TEMPLATE`)."""
    if displacement < 0:
        raise InputError(f"displacement {displacement} nm: expected 0 (off) or more")
    top = read_topology(topology, *topology_options(mdp))
    cg_map = read_mapping(mapping or None, top)
    system = BaselineSystem.from_topology(top, cg_map)
    source = FrameSource.of_mapping(cg_map, top, structure, trajectory, frames, allow_renamed=allow_renamed)
    out = FrameOutput(output, top.atom_names, top.residue_names, system_residue_numbers(top), system.levels, overwrite)
    gmx = gromacs.get_engine(engine) if minimise else None  # fails early when GROMACS is missing
    times = []
    with tempfile.TemporaryDirectory(prefix="gmxdbm-baseline-") as tmp:
        minimiser = _Minimiser(top, gmx, Path(tmp), mdp) if gmx is not None else None

        def place(cg: Frame) -> np.ndarray:
            t0 = time.perf_counter()
            x = baseline_positions(system, cg, seed, displacement)
            timing = FrameTiming(time.perf_counter() - t0)
            if minimiser is not None:
                x, bonded, full = minimiser.run(x, cg.box, f"frame{cg.step}")
                timing = FrameTiming(timing.placement, bonded, full)
            times.append(timing)
            return x

        n_frames = len(run_frames(source, place, desc="baseline", output=out, progress=progress))
    print(timing_summary(times))
    if timings is not None:
        timings.extend(times)
    return n_frames


def timing_summary(times: list[FrameTiming]) -> str:
    """One line: mean wall time per frame and its parts."""

    def mean(values):
        return statistics.fmean(values) if values else 0.0

    total = [t.total for t in times]
    spread = f" +- {statistics.stdev(total):.2f}" if len(total) > 1 else ""
    return (
        f"Wall time per frame: {mean(total):.2f}{spread} s (placement and modifiers "
        f"{mean([t.placement for t in times]):.3f} s, minimisation without non-bonded "
        f"{mean([t.em_bonded for t in times]):.2f} s, with everything {mean([t.em_full for t in times]):.2f} s; "
        f"{len(times)} frame{'s' if len(times) != 1 else ''})"
    )
