"""Observables of atomistic frames compared with reference frames (`gmx-dbm compare`, method.md section 7).

Every set of frames (the reference, then each labelled set, the same `--frames` of each) runs
through one `Analysis`: per frame one neighbour search (`pbc.neighbour_pairs`: non-excluded pairs
within the LJ cut-off, minimum image) shared by all non-bonded observables, and minimum-image bond
vectors for the bonded ones. Frames are analysed in parallel worker processes. The observables
(MDAnalysis style: one class each, `single_frame` then `conclude`):

- `BondedDistribution`: bond lengths (nm), angles or dihedrals (degrees, in (-180, 180]; the IUPAC
  convention GROMACS uses, funct-2 impropers included) of atom tuples picked by atom-type or
  atom-name patterns (fnmatch globs or regular expressions), matched in either direction along
  - `source = "paths"`: simple paths of the molecule's bond graph (each path once), or
  - `source = "bonds" | "angles" | "propers" | "impropers"`: the topology's terms of that kind.
  The sPS table (`topologies/sps/observables.toml`): backbone C-C-C angle = 3-atom bond paths of
  type-C atoms; backbone C-C-C-C dihedral = 4-atom bond paths of type-C atoms; ring C-C-C-C
  improper = the funct-2 improper terms whose four atoms are all C_AR (six per phenyl ring: the
  ring torsions, 0 for a flat ring).
- `MoleculeLJ`: LJ energy per molecule: each non-excluded pair within the cut-off (1.0 nm,
  potential-shift, minimum image) contributes half its energy to each of its two atoms; atoms are
  summed per molecule. Over all molecules this is GROMACS' "LJ (SR)". Also split into the pairs
  within one molecule and those between two (their sum is the total): a per-molecule spread wider
  than the reference's then shows whether the molecules' own shapes or their packing make it.
- `PairDistances`: counts per frame of non-excluded pair distances between atoms of the chosen
  elements (default C-C, 0.01 nm bins from 0 to 0.9 nm).
- `BondDeviation`: RMS deviation of bond (and constraint) lengths from b0, per frame.
- `Clashes`: non-excluded pairs closer than 0.1 nm, counted per frame.
- `RingPlanarity`: per 6-membered cycle of the bond graph and frame, the largest distance of its
  atoms from their least-squares plane.
- `Chirality`: carbons with four bonds, three to heavy atoms and one to H, no two heading
  equivalent branches (`stereo.chiral_centres`; sPS: the backbone CH carbons but the last of each
  chain, which carries the end H; cumene's isopropyl CH is none); per frame the sign of the signed
  volume (a-c).((b-c)x(d-c)) of the heavy neighbours a < b < d (atom index order).
- `BondedEnergyByType`: per frame, the energy of each bonded term kind (bonds, angles, proper and
  improper dihedrals) summed over the terms of each atom-type tuple (minimum image), as % of the
  reference's frame mean.

Scores against the reference: the Jensen-Shannon divergence (natural log, on the fixed bins plus
one underflow and one overflow bin; 0 for identical sets, at most ln 2) and the 1-Wasserstein
distance of the raw values (dihedrals as plain numbers, not on the circle); the per-molecule LJ
energy's 60 bins span the reference's 0.5-99.5 percentile range widened by 20 % (10 % each side).
Pair distances: the L1 difference of per-frame counts relative to the reference,
sum |h/n - h_ref/n_ref| / sum(h_ref/n_ref), and W1 between the two histograms (bin centres
weighted by counts). Chirality: sign flips against the reference, frame i against reference
frame i, centre by centre.
"""

from __future__ import annotations

import fnmatch
import math
import multiprocessing
import os
import re
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from scipy.special import rel_entr
from scipy.stats import wasserstein_distance

from .bundled import bundled_root
from .energies import GMX_TERM_NAMES, lj_row_energies, vector_energies
from .errors import InputError, read_toml
from .forms import geometry
from .pbc import minimum_image, neighbour_pairs
from .stereo import chiral_centres, handedness
from .structure import Frame, iter_frames, load_universe, write_frames
from .topology import Topology, bond_paths

REFERENCE = "reference"
SOURCES = ("paths", "bonds", "angles", "propers", "impropers")
ENERGY_TERMS = (*GMX_TERM_NAMES.values(), "Potential")
LJ_BINS = 60
LJ_RANGE = (0.5, 99.5)  # percentiles of the reference that span the LJ bins ...
LJ_WIDEN = 0.2  # ... widened by this fraction of their width (half on each side)
# MoleculeLJ parts and their observable names: all pairs, then pairs within / between molecules
LJ_PARTS = {
    "total": "LJ energy per molecule",
    "intra": "LJ energy per molecule, intramolecular pairs",
    "inter": "LJ energy per molecule, intermolecular pairs",
}
NEIGHBOUR_SKIN = 1e-3  # nm: the grid search runs in float32; the exact cut-off is applied after it


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class DistributionSpec:
    """One bonded distribution: atom patterns along bonded paths or topology terms, fixed bins."""

    name: str
    atoms: tuple[str, ...]  # one pattern per atom: 2 bond length, 3 angle, 4 dihedral
    bins: tuple[float, float, float]  # first edge, last edge, width (nm or degrees)
    select: str = "type"  # match atom "type"s or atom "name"s
    source: str = "paths"  # see SOURCES
    regex: bool = False  # patterns are regular expressions (full match) instead of fnmatch globs
    molecules: tuple[str, ...] = ()  # molecule types it applies to; empty: all

    @property
    def unit(self) -> str:
        return "nm" if len(self.atoms) == 2 else "deg"


@dataclass(frozen=True)
class ObservableConfig:
    """What `compare` measures; see `read_observables` for the TOML form."""

    distributions: tuple[DistributionSpec, ...] = ()
    molecule_types: tuple[str, ...] = ()  # molecules of the per-molecule LJ energy; empty: all
    cutoff: float = 1.0  # nm, LJ cut-off (potential-shift) and neighbour search radius
    clash_distance: float = 0.1  # nm
    pair_elements: tuple[str, ...] = ("C",)
    pair_r_max: float = 0.9  # nm
    pair_width: float = 0.01  # nm
    pair_between_molecules: bool = False  # only pairs of atoms in different molecules (a liquid's RDF)


def read_observables(path: str | os.PathLike) -> ObservableConfig:
    """An `ObservableConfig` from TOML.

    Top-level keys `molecule_types`, `cutoff`, `clash_distance`; tables `[pair_distances]`
    (`elements`, `r_max`, `width`) and `[[distribution]]` (`name`, `atoms`, `bins`, optional
    `select`, `source`, `regex`, `molecules`; `molecules` defaults to the file's `molecule_types`).
    """
    data = read_toml(path, "observables")
    try:
        return _config_from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"invalid observables: {exc}", path) from None


def _config_from_dict(data: dict) -> ObservableConfig:
    data = dict(data)
    molecule_types = tuple(data.pop("molecule_types", ()))
    pairs = dict(data.pop("pair_distances", {}))
    specs = []
    for entry in data.pop("distribution", []):
        entry = dict(entry)
        entry.setdefault("molecules", molecule_types)
        unknown = set(entry) - {f.name for f in fields(DistributionSpec)}
        if unknown:
            raise ValueError(f"unknown keys in [[distribution]]: {', '.join(sorted(unknown))}")
        spec = DistributionSpec(
            **{
                **entry,
                "atoms": tuple(entry["atoms"]),
                "bins": tuple(entry["bins"]),
                "molecules": tuple(entry["molecules"]),
            }
        )
        _check_spec(spec)
        specs.append(spec)
    pair_keys = {
        "elements": "pair_elements",
        "r_max": "pair_r_max",
        "width": "pair_width",
        "between_molecules": "pair_between_molecules",
    }
    unknown = (set(data) - {"cutoff", "clash_distance"}) | (set(pairs) - set(pair_keys))
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
    config = ObservableConfig(
        tuple(specs),
        molecule_types,
        **data,
        **{pair_keys[k]: tuple(v) if k == "elements" else v for k, v in pairs.items()},
    )
    if config.cutoff < max(config.pair_r_max, config.clash_distance):
        raise ValueError("cutoff must be at least pair_distances.r_max and clash_distance")
    return config


def _check_spec(spec: DistributionSpec) -> None:
    if not 2 <= len(spec.atoms) <= 4:
        raise ValueError(f"distribution '{spec.name}': atoms needs 2 to 4 patterns")
    if spec.select not in ("type", "name"):
        raise ValueError(f"distribution '{spec.name}': select must be 'type' or 'name'")
    if spec.source not in SOURCES:
        raise ValueError(f"distribution '{spec.name}': source must be one of {', '.join(SOURCES)}")
    start, stop, width = spec.bins
    if not (stop > start and width > 0):
        raise ValueError(f"distribution '{spec.name}': bins must be [first edge, last edge, width > 0]")


def default_observables(topology: Topology) -> ObservableConfig:
    """The bundled tables (`topologies/*/observables.toml`) of the topology's molecule types merged;
    without one, those of every bonded type in the topology (`topology_observables`)."""
    present = {name for name, _ in topology.molecules}
    found = [read_observables(p) for p in sorted(bundled_root().glob("*/observables.toml"))]
    found = [c for c in found if present & set(c.molecule_types)]
    if not found:
        return topology_observables(topology)
    return replace(
        found[0],
        distributions=tuple(s for c in found for s in c.distributions),
        molecule_types=tuple(sorted({m for c in found for m in c.molecule_types} & present)),
    )


# Topology terms with per-type distributions (`topology_observables`): what they are called, and their bins in degrees
TYPE_DISTRIBUTIONS = {
    "angles": ("angle", (0.0, 180.0, 2.0)),
    "propers": ("dihedral", (-180.0, 180.0, 4.0)),
    "impropers": ("improper", (-180.0, 180.0, 1.0)),
}


def topology_observables(topology: Topology) -> ObservableConfig:
    """Observables read off the topology, no table needed: the distribution of every angle, proper
    and improper dihedral type (atom-type tuple, either direction) that it has, and the pair
    distances of its heavy atoms, between molecules only when it has several (a liquid's RDF)."""
    specs = []
    for source, (kind, bins) in TYPE_DISTRIBUTIONS.items():
        types = topology.atom_types[getattr(topology, source).indices]
        keys = sorted({min(tuple(row), tuple(row[::-1])) for row in types.tolist()})
        patterns = [tuple(re.escape(t) for t in key) for key in keys]  # exact type names
        specs += [
            DistributionSpec(f"{kind} {'-'.join(key)}", atoms, bins, source=source, regex=True)
            for key, atoms in zip(keys, patterns)
        ]
    heavy = tuple(sorted(set(topology.elements[topology.elements != "H"].tolist())))
    return ObservableConfig(tuple(specs), pair_elements=heavy, pair_between_molecules=len(topology.molecules) > 1)


# --------------------------------------------------------------------------- selections


def rings(bonds: np.ndarray, n_atoms: int, size: int = 6) -> np.ndarray:
    """Every cycle of `size` atoms of the bond graph, once, atoms in ring order. Returns (R, size)."""
    paths = bond_paths(bonds, n_atoms, size)
    keys = np.sort(bonds, axis=1) @ np.array([n_atoms, 1])
    closing = np.sort(paths[:, [0, -1]], axis=1) @ np.array([n_atoms, 1])
    cycles = paths[np.isin(closing, keys)]
    _, first = np.unique(np.sort(cycles, axis=1), axis=0, return_index=True)
    return cycles[np.sort(first)].reshape(-1, size)


def _per_molecule(topology: Topology, molecule_types: tuple[str, ...], local, width: int) -> np.ndarray:
    """Global index tuples (n, width) of `local(moleculetype)` (tuples of local indices) in every
    molecule of the given types (all when empty)."""
    blocks = [np.zeros((0, width), dtype=np.int64)]
    for name, mtype in topology.molecule_types.items():
        if molecule_types and name not in molecule_types:
            continue
        firsts = np.array([first for n, first in topology.molecules if n == name], dtype=np.int64)
        tuples = local(mtype)
        if len(firsts) and len(tuples):
            blocks.append((tuples[None] + firsts[:, None, None]).reshape(-1, width))
    return np.concatenate(blocks)


def _pattern_mask(labels: np.ndarray, patterns: tuple[str, ...], regex: bool) -> np.ndarray:
    """Rows of labels (n, k) whose k-th label matches the k-th pattern, for every k."""
    mask = np.ones(len(labels), dtype=bool)
    for k, pattern in enumerate(patterns):
        distinct, inverse = np.unique(labels[:, k], return_inverse=True)
        if regex:
            hits = np.array([re.fullmatch(pattern, str(label)) is not None for label in distinct])
        else:
            hits = np.array([fnmatch.fnmatchcase(str(label), pattern) for label in distinct])
        mask &= hits[inverse.reshape(-1)]
    return mask


def _unique_rows(rows: np.ndarray) -> np.ndarray:
    """Rows once each, in order of first appearance."""
    if not len(rows):
        return rows
    _, first = np.unique(rows, axis=0, return_index=True)
    return rows[np.sort(first)]


def select_tuples(topology: Topology, spec: DistributionSpec) -> np.ndarray:
    """Global atom tuples of a distribution, each oriented so that it matches the patterns."""
    k = len(spec.atoms)
    if spec.source == "paths":
        tuples = _per_molecule(topology, spec.molecules, lambda m: bond_paths(m.bonds, m.n_atoms, k), k)
    else:
        tuples = _unique_rows(getattr(topology, spec.source).indices)  # funct 9: several terms, one tuple
        if tuples.shape[1] != k:
            raise InputError(
                f"distribution '{spec.name}': {spec.source} have {tuples.shape[1]} atoms, the patterns name {k}"
            )
        if spec.molecules:
            names = np.array([name for name, _ in topology.molecules])[topology.molecule_index]
            tuples = tuples[np.isin(names[tuples[:, 0]], spec.molecules)]
    labels = (topology.atom_types if spec.select == "type" else topology.atom_names)[tuples.reshape(-1)]
    labels = labels.reshape(tuples.shape)
    forward = _pattern_mask(labels, spec.atoms, spec.regex)
    backward = ~forward & _pattern_mask(labels[:, ::-1], spec.atoms, spec.regex)
    selected = np.concatenate([tuples[forward], tuples[backward][:, ::-1]])
    if len(selected) == 0:
        raise InputError(
            f"distribution '{spec.name}' selects no atoms ({spec.select}s {'-'.join(spec.atoms)} along {spec.source})"
        )
    return selected


# --------------------------------------------------------------------------- one frame


@dataclass(frozen=True)
class FrameContext:
    """One frame with what several observables share: its non-excluded neighbour pairs."""

    positions: torch.Tensor  # (N, 3) nm, float64
    box: torch.Tensor  # (3, 3) nm
    pairs: np.ndarray  # (P, 2) non-excluded pairs i < j closer than the cut-off
    distances: np.ndarray  # (P,) nm

    def vectors(self, i: np.ndarray, j: np.ndarray) -> torch.Tensor:
        """Minimum-image displacements x_j - x_i (..., 3)."""
        return minimum_image(self.positions[torch.as_tensor(j)] - self.positions[torch.as_tensor(i)], self.box)

    def chain_vectors(self, tuples: np.ndarray) -> list[torch.Tensor]:
        """Minimum-image vectors x_(k+1) - x_k (n, 3) along atom tuples (n, m): m - 1 of them."""
        return [self.vectors(tuples[:, k], tuples[:, k + 1]) for k in range(tuples.shape[1] - 1)]


def frame_context(positions: np.ndarray, box: np.ndarray, excluded_keys: np.ndarray, cutoff: float) -> FrameContext:
    """Neighbour search of one frame; excluded pairs (keys i * N + j, ascending) are dropped."""
    pairs, shifts = neighbour_pairs(positions, box, cutoff + NEIGHBOUR_SKIN)
    d = np.take(positions, pairs[:, 1], axis=0) - np.take(positions, pairs[:, 0], axis=0) + shifts
    distances = np.sqrt(np.einsum("pi,pi->p", d, d))
    keep = distances < cutoff
    if len(excluded_keys):  # only pairs of nearby indices can be excluded: look up those
        n = len(positions)
        near = np.flatnonzero(pairs[:, 1] - pairs[:, 0] <= (excluded_keys % n - excluded_keys // n).max())
        keys = pairs[near, 0] * n + pairs[near, 1]
        keep[near] &= excluded_keys[np.minimum(np.searchsorted(excluded_keys, keys), len(excluded_keys) - 1)] != keys
    return FrameContext(
        torch.as_tensor(positions, dtype=torch.float64),
        torch.as_tensor(box, dtype=torch.float64),
        pairs[keep],
        distances[keep],
    )


# --------------------------------------------------------------------------- observables


class Observable:
    """One observable: per-frame values (`single_frame`), joined over frames (`conclude`),
    summarised (`summary`) and scored against the reference's values (`score`)."""

    name: str
    unit: str = ""
    kind: str = "check"  # "distribution" (plotted and scored), "histogram", "check" (summaries only) or "energy"

    def single_frame(self, ctx: FrameContext) -> np.ndarray:
        raise NotImplementedError

    def conclude(self, per_frame: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(per_frame)

    def summary(self, values: np.ndarray) -> dict[str, float]:
        return {"mean": float(np.mean(values)), "sd": float(np.std(values))}

    def score(self, reference: np.ndarray, values: np.ndarray) -> dict[str, float]:
        return {}


class Distribution(Observable):
    """Raw values on fixed bins: scored by JSD on the bins and W1 on the values."""

    kind = "distribution"

    def edges(self, reference: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score(self, reference: np.ndarray, values: np.ndarray) -> dict[str, float]:
        edges = self.edges(reference)
        p, q = histogram_probabilities(values, edges), histogram_probabilities(reference, edges)
        return {"jsd": jensen_shannon(p, q), "w1": float(wasserstein_distance(values, reference))}


@dataclass
class BondedDistribution(Distribution):
    """Bond lengths, angles or dihedrals of fixed atom tuples (see `DistributionSpec`)."""

    spec: DistributionSpec
    tuples: np.ndarray  # (n, 2 | 3 | 4) global atom indices

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def unit(self) -> str:
        return self.spec.unit

    def single_frame(self, ctx: FrameContext) -> np.ndarray:
        steps = ctx.chain_vectors(self.tuples)
        value = geometry(steps).numpy()
        return value if len(steps) == 1 else np.degrees(value)

    def edges(self, reference: np.ndarray) -> np.ndarray:
        return fixed_edges(*self.spec.bins)


@dataclass
class MoleculeLJ(Distribution):
    """LJ energy of each molecule: every non-excluded pair's potential-shifted LJ energy within the
    cut-off, half to each of its two atoms, summed over the molecule's atoms (kJ/mol). `part`
    (`LJ_PARTS`) keeps all pairs, only those within one molecule, or only those between two: which
    of the two makes a per-molecule spread the reference does not have."""

    molecule_index: np.ndarray  # (N,)
    type_index: np.ndarray  # (N,)
    c6: np.ndarray  # (T, T)
    c12: np.ndarray
    cutoff: float
    molecules: np.ndarray  # which molecules to report
    part: str = "total"
    unit = "kJ/mol"

    @property
    def name(self) -> str:
        return LJ_PARTS[self.part]

    def single_frame(self, ctx: FrameContext) -> np.ndarray:
        same = self.molecule_index[ctx.pairs[:, 0]] == self.molecule_index[ctx.pairs[:, 1]]
        keep = {"total": slice(None), "intra": same, "inter": ~same}[self.part]
        pairs, distances = ctx.pairs[keep], ctx.distances[keep]
        i, j = pairs[:, 0], pairs[:, 1]
        pair_type = self.type_index[i] * len(self.c6) + self.type_index[j]
        c6, c12 = (torch.from_numpy(np.take(table, pair_type)) for table in (self.c6, self.c12))
        energy = lj_row_energies(torch.from_numpy(distances**2), c6, c12, self.cutoff).numpy()
        n = int(self.molecule_index.max()) + 1
        per_molecule = np.bincount(self.molecule_index[i], 0.5 * energy, minlength=n) + np.bincount(
            self.molecule_index[j], 0.5 * energy, minlength=n
        )
        return per_molecule[self.molecules]

    def edges(self, reference: np.ndarray) -> np.ndarray:
        low, high = np.percentile(reference, LJ_RANGE)
        pad = 0.5 * LJ_WIDEN * max(high - low, 1e-9)
        return np.linspace(low - pad, high + pad, LJ_BINS + 1)


@dataclass
class PairDistances(Observable):
    """Counts per frame of non-excluded pair distances between atoms of the chosen elements."""

    chosen: np.ndarray  # (N,) bool: atom of one of the elements
    r_max: float
    width: float
    elements: tuple[str, ...]
    molecule_index: np.ndarray | None = None  # (N,): given, only pairs between two molecules count
    kind = "histogram"
    unit = "nm"

    @property
    def name(self) -> str:
        chosen = "/".join(self.elements)
        which = "non-bonded" if self.molecule_index is None else "intermolecular"
        return f"{which} {chosen}-{chosen} pair distances"

    @property
    def edges(self) -> np.ndarray:
        return fixed_edges(0.0, self.r_max, self.width)

    def single_frame(self, ctx: FrameContext) -> np.ndarray:
        i, j = ctx.pairs[:, 0], ctx.pairs[:, 1]
        keep = self.chosen[i] & self.chosen[j] & (ctx.distances < self.r_max)
        if self.molecule_index is not None:
            keep &= self.molecule_index[i] != self.molecule_index[j]
        bins = (ctx.distances[keep] / self.width).astype(np.int64)
        return np.bincount(np.minimum(bins, len(self.edges) - 2), minlength=len(self.edges) - 1).astype(np.float64)

    def conclude(self, per_frame: list[np.ndarray]) -> np.ndarray:
        return np.stack(per_frame)

    def summary(self, values: np.ndarray) -> dict[str, float]:
        centres = 0.5 * (self.edges[1:] + self.edges[:-1])
        total = values.sum(0)
        return {
            "pairs_per_frame": float(values.sum(1).mean()),
            "mean_distance": float((centres * total).sum() / max(total.sum(), 1.0)),
        }

    def score(self, reference: np.ndarray, values: np.ndarray) -> dict[str, float]:
        h_ref, h = reference.mean(0), values.mean(0)
        centres = 0.5 * (self.edges[1:] + self.edges[:-1])
        return {
            "l1": float(np.abs(h - h_ref).sum() / h_ref.sum()),
            "w1": float(wasserstein_distance(centres, centres, h, h_ref)),
        }


@dataclass
class BondDeviation(Observable):
    """RMS deviation of bond lengths from their b0 (nm), one value per frame."""

    pairs: np.ndarray  # (n, 2)
    b0: np.ndarray  # (n,)
    name = "bond length RMS deviation"
    unit = "nm"

    def single_frame(self, ctx: FrameContext) -> np.ndarray:
        lengths = ctx.vectors(self.pairs[:, 0], self.pairs[:, 1]).norm(dim=-1).numpy()
        return np.array([math.sqrt(np.mean((lengths - self.b0) ** 2))])

    def summary(self, values: np.ndarray) -> dict[str, float]:
        return {"mean": float(values.mean()), "max": float(values.max())}


@dataclass
class Clashes(Observable):
    """Non-excluded pairs closer than `distance` (nm), counted per frame."""

    distance: float
    name = "clashes"
    unit = "pairs per frame"

    def single_frame(self, ctx: FrameContext) -> np.ndarray:
        return np.array([np.count_nonzero(ctx.distances < self.distance)])

    def summary(self, values: np.ndarray) -> dict[str, float]:
        return {"mean": float(values.mean()), "max": float(values.max()), "total": float(values.sum())}


@dataclass
class RingPlanarity(Observable):
    """Per ring and frame, the largest distance (nm) of the ring's atoms from their best-fit plane."""

    rings: np.ndarray  # (R, size)
    name = "ring planarity"
    unit = "nm"

    def single_frame(self, ctx: FrameContext) -> np.ndarray:
        if len(self.rings) == 0:
            return np.zeros(0)
        rel = ctx.vectors(np.repeat(self.rings[:, :1], self.rings.shape[1], 1), self.rings).numpy()
        centred = rel - rel.mean(1, keepdims=True)
        normal = np.linalg.eigh(np.einsum("rki,rkj->rij", centred, centred))[1][:, :, 0]  # smallest eigenvalue
        return np.abs(np.einsum("rki,ri->rk", centred, normal)).max(1)

    def summary(self, values: np.ndarray) -> dict[str, float]:
        if len(values) == 0:
            return {"rings": 0}
        return {"max": float(values.max()), "mean": float(values.mean())}


@dataclass
class Chirality(Observable):
    """Sign of the signed volume of each chiral centre's heavy neighbours; flips against the
    reference counted frame by frame and centre by centre (frames paired in order)."""

    centres: np.ndarray  # (C,)
    neighbours: np.ndarray  # (C, 3) in atom index order
    name = "chirality"
    unit = "centres"

    def single_frame(self, ctx: FrameContext) -> np.ndarray:
        return handedness(ctx.positions, ctx.box, self.centres, self.neighbours).numpy().astype(np.int8)

    def conclude(self, per_frame: list[np.ndarray]) -> np.ndarray:
        return np.stack(per_frame)

    def summary(self, values: np.ndarray) -> dict[str, float]:
        return {
            "centres": int(values.shape[1]),
            "positive_per_frame": float((values > 0).sum(1).mean()),
            "negative_per_frame": float((values < 0).sum(1).mean()),
        }

    def score(self, reference: np.ndarray, values: np.ndarray) -> dict[str, float]:
        n = min(len(reference), len(values))
        flips = (values[:n] != reference[:n]).sum(1)
        checked = n * values.shape[1]
        return {
            "frames_compared": n,
            "flips_per_frame": float(flips.mean()) if n else 0.0,
            "flipped_fraction": float(flips.sum() / checked) if checked else 0.0,
        }


@dataclass
class BondedEnergyByType(Observable):
    """Frame energy of each bonded term kind split by the atom types of its terms ("Angle
    C_AR-C_AR-H_AR"): shows which terms a total that looks right hides (too-ideal rings against
    too-hot junctions); scored as % of the reference's mean."""

    terms: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # term -> (indices, params, group)
    groups: list[str]
    name = "bonded energy by type"
    unit = "kJ/mol"
    kind = "energy"

    @classmethod
    def from_topology(cls, topology: Topology) -> BondedEnergyByType:
        """One group per term kind (GROMACS name) and atom-type tuple (`_type_tuple`), in topology order."""
        groups: dict[str, int] = {}
        terms = {}
        for term, rows in topology.bonded.items():
            if not len(rows.indices):
                continue
            labels = [
                f"{GMX_TERM_NAMES[term]} {'-'.join(_type_tuple(term, topology.atom_types[i]))}" for i in rows.indices
            ]
            group = np.array([groups.setdefault(label, len(groups)) for label in labels], dtype=np.int64)
            terms[term] = (rows.indices, rows.params, group)
        return cls(terms, list(groups))

    def single_frame(self, ctx: FrameContext) -> np.ndarray:
        out = np.zeros((1, len(self.groups)))
        for term, (indices, params, group) in self.terms.items():
            energy = vector_energies(term, ctx.chain_vectors(indices), torch.as_tensor(params)).numpy()
            out[0] += np.bincount(group, energy, minlength=len(self.groups))
        return out

    def summary(self, values: np.ndarray) -> dict[str, float]:
        return dict(zip(self.groups, values.mean(0).tolist()))

    def score(self, reference: np.ndarray, values: np.ndarray) -> dict[str, float]:
        ref = reference.mean(0)
        share = 100 * values.mean(0) / np.where(ref == 0, np.nan, ref)
        return {f"{group} %": float(v) for group, v in zip(self.groups, share)}


def _type_tuple(term: str, types: np.ndarray) -> tuple[str, ...]:
    """Atom types of a term, read in the direction that sorts first where the term reads the same
    both ways (bonds, angles, proper dihedrals: H-C-C and C-C-H are one kind), as given otherwise."""
    forward = tuple(types.tolist())
    return forward if "improper" in term else min(forward, forward[::-1])


# --------------------------------------------------------------------------- scores


def fixed_edges(start: float, stop: float, width: float) -> np.ndarray:
    """Bin edges from `start` to `stop` in steps of `width` (the last bin absorbs rounding)."""
    return np.linspace(start, stop, max(int(round((stop - start) / width)), 1) + 1)


def histogram_probabilities(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Fractions of `values` below the first edge, in each bin, and above the last edge."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    inside = np.histogram(values, edges)[0]
    counts = np.concatenate([[np.count_nonzero(values < edges[0])], inside, [np.count_nonzero(values > edges[-1])]])
    return counts / max(len(values), 1)


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (natural log) of two discrete distributions; 0 when p == q."""
    m = 0.5 * (p + q)
    return float(0.5 * rel_entr(p, m).sum() + 0.5 * rel_entr(q, m).sum())


# --------------------------------------------------------------------------- analysis of one set


@dataclass
class SetResult:
    """Every observable's values for one set of frames, and its rerun energies (when run)."""

    label: str
    trajectory: str
    n_frames: int
    values: dict[str, np.ndarray]
    energies: dict[str, np.ndarray] | None = None


@dataclass
class Analysis:
    """All observables of one system, built once from the topology and run over sets of frames."""

    cutoff: float
    excluded_keys: np.ndarray  # exclusions as i * N + j, sorted
    observables: list[Observable] = field(default_factory=list)

    @classmethod
    def from_topology(cls, topology: Topology, config: ObservableConfig) -> Analysis:
        """Resolve every observable's atoms and parameters for this topology."""
        n = topology.n_atoms
        observables: list[Observable] = [
            BondedDistribution(spec, select_tuples(topology, spec)) for spec in config.distributions
        ]
        names = np.array([name for name, _ in topology.molecules])
        wanted = np.isin(names, config.molecule_types) if config.molecule_types else np.ones(len(names), bool)
        observables += [
            MoleculeLJ(
                topology.molecule_index,
                topology.type_index,
                topology.c6,
                topology.c12,
                config.cutoff,
                np.flatnonzero(wanted),
                part,
            )
            for part in LJ_PARTS
        ]
        observables.append(
            PairDistances(
                np.isin(topology.elements, config.pair_elements),
                config.pair_r_max,
                config.pair_width,
                config.pair_elements,
                topology.molecule_index if config.pair_between_molecules else None,
            )
        )
        bonds = np.concatenate([topology.bonds.indices, topology.constraints.indices]).reshape(-1, 2)
        b0 = np.concatenate([topology.bonds.params[:, 0], topology.constraints.params[:, 0]])
        observables.append(BondDeviation(bonds, b0))
        observables.append(Clashes(config.clash_distance))
        observables.append(RingPlanarity(_per_molecule(topology, (), lambda m: rings(m.bonds, m.n_atoms), 6)))
        observables.append(Chirality(*chiral_centres(topology)))
        observables.append(BondedEnergyByType.from_topology(topology))
        keys = np.sort(topology.exclusions[:, 0] * n + topology.exclusions[:, 1])
        return cls(config.cutoff, keys, observables)

    def single_frame(self, positions: np.ndarray, box: np.ndarray) -> list[np.ndarray]:
        """Every observable's values of one frame."""
        ctx = frame_context(positions, box, self.excluded_keys, self.cutoff)
        with torch.no_grad():
            return [o.single_frame(ctx) for o in self.observables]

    def run(self, frames: Iterable[Frame], executor: Executor | None = None, window: int = 4) -> dict[str, np.ndarray]:
        """Values of every observable over `frames`, in order; with an executor (see `frame_workers`)
        frames are analysed in parallel, at most `window` at a time."""
        per_frame = list(self._frames(frames, executor, window))
        if not per_frame:
            raise InputError("no frames selected")
        return {o.name: o.conclude([f[k] for f in per_frame]) for k, o in enumerate(self.observables)}

    def _frames(self, frames: Iterable[Frame], executor: Executor | None, window: int) -> Iterator[list[np.ndarray]]:
        if executor is None:
            for frame in frames:
                yield self.single_frame(frame.positions, frame.box)
            return
        pending: deque = deque()
        for frame in frames:
            pending.append(executor.submit(_worker_frame, frame.positions, frame.box))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


_worker_analysis: Analysis | None = None


def _init_worker(analysis: Analysis) -> None:
    global _worker_analysis
    torch.set_num_threads(1)  # one process per core
    _worker_analysis = analysis


def _worker_frame(positions: np.ndarray, box: np.ndarray) -> list[np.ndarray]:
    return _worker_analysis.single_frame(positions, box)


def frame_workers(analysis: Analysis, workers: int) -> ProcessPoolExecutor:
    """Worker processes (spawned, one thread each) that analyse frames with `analysis`."""
    return ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(analysis,)
    )


def available_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# --------------------------------------------------------------------------- compare


def set_energies(
    structure, trajectory, topology: Topology, frames: slice = slice(None), mdp=None, engine=None
) -> dict[str, np.ndarray]:
    """Per-frame GROMACS energies (`gmx mdrun -rerun`) of the selected frames, by term name."""
    from .gromacs import rerun_energies

    with tempfile.TemporaryDirectory(prefix="gmxdbm-compare-") as tmp:
        if frames != slice(None):
            universe = load_universe(structure, trajectory)
            trajectory = Path(tmp) / "frames.xtc"
            write_frames(
                trajectory,
                topology.atom_names,
                topology.residue_names,
                topology.residue_numbers,
                list(iter_frames(universe, frames)),
            )
        energies = rerun_energies(structure, trajectory, topology.path, mdp=mdp, engine=engine)
    return {term: energies[term] for term in ENERGY_TERMS if term in energies}
