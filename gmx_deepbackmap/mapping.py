"""CG mappings: the atoms that make each bead, the bead that rebuilds each atom, AA -> CG coordinates.

The file format is described in `topologies/MAPPING.md`. `read_mapping` checks a mapping against
the topology while it reads it, so that every mistake is reported as one line naming the file and
line. `Mapping.cg_positions` is the forward map (weighted centres of beads made whole across
periodic boundaries); `map_to_cg` applies it to structures and trajectories (`gmx-dbm map`).

Units: nm. Atom and bead indices are 0-based; "local" indices count within one molecule type,
"system" indices over the whole system in topology order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .bundled import bundled_root
from .errors import InputError, read_text
from .frames import FrameOutput, FrameSource, run_frames
from .pbc import minimum_image
from .topology import MoleculeType, Topology, read_topology, system_residue_numbers

SECTIONS = ("moleculetype", "beads", "members", "owners", "modifiers")
WEIGHTINGS = ("mass", "geometric")
# Geometric modifiers of the `backward` baseline: fewest and most atoms per line (target atom first).
MODIFIER_ATOMS = {"cis": (4, 4), "trans": (4, 4), "out": (3, 4), "chiral": (4, 5)}
MAPPING_SUFFIX = ".map"

PathLike = str | os.PathLike
Array = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class Bead:
    """One bead of a molecule type; atom and bead indices are local to the molecule."""

    name: str
    type: str
    atoms: np.ndarray  # (k,) member atoms, in the order written
    weights: np.ndarray  # (k,) mass * weight (weight alone if geometric), normalised to sum 1
    owned: np.ndarray  # (o,) atoms this bead reconstructs
    frame_reference: int  # bead that orients the local frame (-1: none)
    geometric: bool  # plain geometric weighting instead of mass weighting


@dataclass(frozen=True)
class Modifier:
    """A geometric modifier line (`backward` style), stored for the baseline: kind and local atoms."""

    kind: str  # cis, trans, out or chiral
    atoms: tuple[int, ...]  # local atom indices; the first is the atom the modifier places


@dataclass(frozen=True)
class MoleculeMapping:
    """The mapping of one molecule type, as read from its file."""

    name: str
    path: Path
    beads: tuple[Bead, ...]
    atom_owner: np.ndarray  # (n_atoms,) local bead that reconstructs each atom
    bead_bonds: np.ndarray  # (n, 2) bead pairs i < j joined by a bond between atoms they own
    modifiers: tuple[Modifier, ...]

    @property
    def n_beads(self) -> int:
        return len(self.beads)


@dataclass(frozen=True)
class Mapping:
    """The mapping of a whole system: one row per bead (system order), plus the AA -> CG map."""

    molecule_types: dict[str, MoleculeMapping]
    bead_names: np.ndarray  # (M,) str
    bead_types: np.ndarray  # (M,) str
    bead_residue_names: np.ndarray  # (M,) str, residue of the bead's first member atom
    bead_residue_numbers: np.ndarray  # (M,) residues numbered 1, 2, ... over the system
    bead_molecule: np.ndarray  # (M,) molecule index of each bead
    bead_atom: np.ndarray  # (M,) first member atom; the bead is made whole around it
    frame_reference: np.ndarray  # (M,) system bead index orienting each bead's frame, -1 if none
    bead_bonds: np.ndarray  # (B, 2) system bead pairs i < j, from `MoleculeMapping.bead_bonds`
    atom_owner: np.ndarray  # (N,) system bead index that reconstructs each atom
    member_atoms: np.ndarray  # (K,) all (bead, atom) memberships: the atom ...
    member_beads: np.ndarray  # (K,) ... the bead ...
    member_weights: np.ndarray  # (K,) ... and its normalised weight within the bead

    @property
    def n_beads(self) -> int:
        return len(self.bead_names)

    def cg_positions(self, positions: Array, box: Array, wrap: bool = True) -> Array:
        """Bead positions (..., M, 3) from atom positions (..., N, 3) and boxes (..., 3, 3), nm.

        Each bead's members are made whole by minimum image relative to its first member before
        averaging, so molecules broken across the boundaries map correctly. With `wrap`, beads
        are put in the brick-shaped unit cell as GROMACS does (the reference CG files do). NumPy
        in, NumPy out; torch tensors in, (differentiable) tensors out. A zero box means no PBC.
        """
        as_numpy = not torch.is_tensor(positions)
        x = torch.as_tensor(positions, dtype=torch.float64) if as_numpy else positions
        b = torch.as_tensor(box, dtype=x.dtype, device=x.device)
        members = torch.as_tensor(self.member_atoms, device=x.device)
        beads = torch.as_tensor(self.member_beads, device=x.device)
        weights = torch.as_tensor(self.member_weights, dtype=x.dtype, device=x.device)
        anchors = x[..., torch.as_tensor(self.bead_atom, device=x.device), :]
        d = x[..., members, :] - anchors[..., beads, :]
        periodic = bool((torch.diagonal(b, dim1=-2, dim2=-1) > 0).all())
        per_point_box = b if b.dim() == 2 else b[..., None, :, :]
        if periodic:
            d = minimum_image(d, per_point_box)
        centres = anchors.index_add(-2, beads, d * weights[:, None])
        if wrap and periodic:
            centres = put_in_box(centres, per_point_box)
        return centres.numpy() if as_numpy else centres


def put_in_box(x: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Shift points into the brick-shaped unit cell 0 <= x_d < box[d, d] (GROMACS' convention)."""
    for k in (2, 1, 0):
        n = torch.floor(x[..., k] / box[..., k, k])
        x = x - n[..., None] * box[..., k, :]
    return x


# --------------------------------------------------------------------------- reading


def read_mapping(path: PathLike | Sequence[PathLike] | None, topology: Topology) -> Mapping:
    """Read and check the mapping of every molecule type the system uses.

    `path` is one file or several (each may describe several molecule types); molecule types
    none of them describes take their bundled default mapping (see `default_mapping_path`).
    """
    paths = [] if path is None else [path] if isinstance(path, (str, os.PathLike)) else list(path)
    mappings: dict[str, MoleculeMapping] = {}
    for p in paths:
        _add_file(mappings, p, topology)
    for name in dict.fromkeys(name for name, _ in topology.molecules):
        if name not in mappings:
            default = default_mapping_path(name)
            if default is None:
                raise InputError(f"no mapping for molecule type '{name}' (give one with -m)", topology.path)
            _add_file(mappings, default, topology)
    return _assemble(topology, mappings)


def default_mapping_path(molecule_type: str) -> Path | None:
    """The bundled mapping `topologies/*/<molecule_type>.map`, if there is exactly one."""
    found = sorted(bundled_root().glob(f"*/{molecule_type}{MAPPING_SUFFIX}"))
    if len(found) > 1:
        raise InputError(
            f"several bundled mappings for molecule type '{molecule_type}' "
            f"({', '.join(str(p) for p in found)}): choose one with -m"
        )
    return found[0] if found else None


def _add_file(mappings: dict[str, MoleculeMapping], path: PathLike, topology: Topology) -> None:
    for parser in _parse_file(Path(path), topology):
        if parser.name in mappings:
            first = mappings[parser.name].path
            raise parser.error(f"molecule type '{parser.name}' is already mapped in {first}", parser.lineno)
        mappings[parser.name] = parser.finish()


def _parse_file(path: Path, topology: Topology) -> list[_MoleculeParser]:
    if not path.is_file():
        raise InputError("file not found", path)
    parsers: list[_MoleculeParser] = []
    section = None
    for lineno, raw in enumerate(read_text(path, "mapping file").splitlines(), start=1):
        text = raw.split(";", 1)[0].strip()
        if not text:
            continue
        if text.startswith("["):
            section = text.strip("[] \t").lower()
            if section not in SECTIONS:
                raise InputError(f"unknown section [ {section} ] (expected one of {', '.join(SECTIONS)})", path, lineno)
            if section != "moleculetype" and (not parsers or parsers[-1].name is None):
                raise InputError(f"[ {section} ] before the name of a [ moleculetype ]", path, lineno)
            if section == "moleculetype":
                parsers.append(_MoleculeParser(path, topology))
            continue
        if section is None:
            raise InputError("data before the first [ section ]", path, lineno)
        parsers[-1].read(section, text.split(), lineno)
    if not parsers:
        raise InputError("no [ moleculetype ] in the mapping file", path)
    return parsers


@dataclass
class _BeadDraft:
    name: str
    type: str
    frame: str
    geometric: bool
    lineno: int
    members: dict[int, float] = field(default_factory=dict)  # local atom -> weight as written
    owned: list[int] = field(default_factory=list)


class _MoleculeParser:
    """The lines of one `[ moleculetype ]` block, checked one by one against the topology."""

    def __init__(self, path: Path, topology: Topology):
        self.path = path
        self.topology = topology
        self.name: str | None = None
        self.lineno = 0
        self.section = "moleculetype"
        self.moltype: MoleculeType | None = None
        self.atom_index: dict[str, int] = {}
        self.beads: dict[str, _BeadDraft] = {}
        self.owner: dict[int, str] = {}
        self.modifiers: list[Modifier] = []

    def error(self, message: str, lineno: int, section: str | None = None) -> InputError:
        return InputError(message, self.path, lineno, section)

    def read(self, section: str, words: list[str], lineno: int) -> None:
        self.section = section
        handler = {
            "moleculetype": self._moleculetype,
            "beads": self._bead,
            "members": self._members,
            "owners": self._owners,
            "modifiers": self._modifier,
        }[section]
        handler(words, lineno)

    def _fail(self, message: str, lineno: int) -> InputError:
        return self.error(message, lineno, self.section)

    def _moleculetype(self, words: list[str], lineno: int) -> None:
        if self.name is not None or len(words) != 1:
            raise self._fail("expected one molecule type name per [ moleculetype ]", lineno)
        self.name, self.lineno = words[0], lineno
        self.moltype = self.topology.molecule_types.get(self.name)
        if self.moltype is None:
            raise self._fail(f"molecule type '{self.name}' is not in the topology {self.topology.path}", lineno)
        for i, atom in enumerate(self.moltype.atom_names):
            if atom in self.atom_index:
                raise self._fail(
                    f"atom name '{atom}' occurs twice in moleculetype '{self.name}' of "
                    f"{self.topology.path}; mappings need unique atom names",
                    lineno,
                )
            self.atom_index[atom] = i

    def _bead(self, words: list[str], lineno: int) -> None:
        if not 3 <= len(words) <= 4:
            raise self._fail("expected: name type frame-reference [mass|geometric]", lineno)
        name, bead_type, frame = words[:3]
        weighting = words[3] if len(words) == 4 else "mass"
        if weighting not in WEIGHTINGS:
            raise self._fail(f"unknown weighting '{weighting}' (expected mass or geometric)", lineno)
        if name in self.beads:
            raise self._fail(f"bead '{name}' defined twice (first on line {self.beads[name].lineno})", lineno)
        self.beads[name] = _BeadDraft(name, bead_type, frame, weighting == "geometric", lineno)

    def _members(self, words: list[str], lineno: int) -> None:
        bead = self._bead_named(words, lineno)
        for word in words[1:]:
            atom, _, weight_text = word.rpartition(":") if ":" in word else (word, "", "1")
            index = self._atom(atom, lineno)
            if index in bead.members:
                raise self._fail(f"atom '{atom}' listed twice in bead '{bead.name}'", lineno)
            bead.members[index] = self._weight(weight_text, atom, lineno)

    def _owners(self, words: list[str], lineno: int) -> None:
        bead = self._bead_named(words, lineno)
        for atom in words[1:]:
            index = self._atom(atom, lineno)
            if index in self.owner:
                raise self._fail(
                    f"atom '{atom}' owned twice (by bead '{self.owner[index]}' and by "
                    f"bead '{bead.name}'); each atom needs exactly one owner",
                    lineno,
                )
            self.owner[index] = bead.name
            bead.owned.append(index)

    def _modifier(self, words: list[str], lineno: int) -> None:
        kind = words[0].lower()
        if kind not in MODIFIER_ATOMS:
            raise self._fail(f"unknown modifier '{words[0]}' (expected {', '.join(MODIFIER_ATOMS)})", lineno)
        fewest, most = MODIFIER_ATOMS[kind]
        if not fewest <= len(words) - 1 <= most:
            count = str(fewest) if fewest == most else f"{fewest} to {most}"
            raise self._fail(f"modifier '{kind}' takes {count} atom names, found {len(words) - 1}", lineno)
        self.modifiers.append(Modifier(kind, tuple(self._atom(a, lineno) for a in words[1:])))

    def _bead_named(self, words: list[str], lineno: int) -> _BeadDraft:
        if len(words) < 2:
            raise self._fail("expected a bead name followed by atom names", lineno)
        if words[0] not in self.beads:
            raise self._fail(f"bead '{words[0]}' is not defined in [ beads ]", lineno)
        return self.beads[words[0]]

    def _atom(self, atom: str, lineno: int) -> int:
        if atom not in self.atom_index:
            raise self._fail(f"atom '{atom}' is not in moleculetype '{self.name}' of {self.topology.path}", lineno)
        return self.atom_index[atom]

    def _weight(self, text: str, atom: str, lineno: int) -> float:
        try:
            weight = float(text)
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight):
            raise self._fail(f"malformed weight '{text}' for atom '{atom}' (expected a positive number)", lineno)
        if weight <= 0:
            raise self._fail(f"weight {text} of atom '{atom}' is not positive", lineno)
        return weight

    def finish(self) -> MoleculeMapping:
        """Whole-block checks (members, ownership, frame references), then the `MoleculeMapping`."""
        if not self.beads:
            raise self.error(f"molecule type '{self.name}' has no [ beads ]", self.lineno, "moleculetype")
        unowned = [a for a in self.moltype.atom_names if self.atom_index[a] not in self.owner]
        if unowned:
            shown = ", ".join(unowned[:5]) + (f" and {len(unowned) - 5} more" if len(unowned) > 5 else "")
            raise self.error(
                f"atoms never owned by a bead: {shown} (every atom needs exactly one owner)",
                self.lineno,
                "moleculetype",
            )
        order = {name: i for i, name in enumerate(self.beads)}
        masses = self._masses()
        beads = tuple(self._finish_bead(draft, order, masses) for draft in self.beads.values())
        owner = np.array([order[self.owner[i]] for i in range(self.moltype.n_atoms)], dtype=np.int64)
        return MoleculeMapping(
            self.name, self.path, beads, owner, _bead_bonds(owner, self.moltype.bonds), tuple(self.modifiers)
        )

    def _masses(self) -> np.ndarray:
        starts = [start for name, start in self.topology.molecules if name == self.name]
        if not starts:  # a molecule type the system does not use: it is dropped, masses play no role
            return np.ones(self.moltype.n_atoms)
        return self.topology.masses[starts[0] : starts[0] + self.moltype.n_atoms]

    def _finish_bead(self, draft: _BeadDraft, order: dict[str, int], masses: np.ndarray) -> Bead:
        if not draft.members:
            raise self.error(f"bead '{draft.name}' has no [ members ]", draft.lineno, "beads")
        if draft.frame == "-":
            frame = -1
        elif draft.frame in order and draft.frame != draft.name:
            frame = order[draft.frame]
        else:
            raise self.error(
                f"frame reference '{draft.frame}' of bead '{draft.name}' is not another bead "
                "of this molecule type (or '-' for none)",
                draft.lineno,
                "beads",
            )
        atoms = np.fromiter(draft.members, dtype=np.int64)
        weights = np.fromiter(draft.members.values(), dtype=np.float64)
        if not draft.geometric:
            weights = weights * masses[atoms]
        if weights.sum() <= 0:
            raise self.error(f"bead '{draft.name}' has zero total mass (declare it geometric)", draft.lineno, "beads")
        return Bead(
            draft.name,
            draft.type,
            atoms,
            weights / weights.sum(),
            np.array(draft.owned, dtype=np.int64),
            frame,
            draft.geometric,
        )


def _bead_bonds(owner: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    """Bead pairs i < j whose owned atoms share a chemical bond."""
    pairs = np.sort(owner[bonds.reshape(-1, 2)], axis=1)
    return np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0).reshape(-1, 2)


# --------------------------------------------------------------------------- system assembly


def _assemble(topology: Topology, mappings: dict[str, MoleculeMapping]) -> Mapping:
    """Repeat each molecule type's mapping for its molecules, in topology order, without Python
    loops over molecules (systems may hold many small ones)."""
    names = np.array([name for name, _ in topology.molecules])
    first_atom = np.array([start for _, start in topology.molecules], dtype=np.int64)
    n_beads = np.array([mappings[name].n_beads for name in names], dtype=np.int64)
    first_bead = np.concatenate([[0], np.cumsum(n_beads)[:-1]])
    m = int(n_beads.sum())
    out = {
        key: np.empty(m, dtype=dtype)
        for key, dtype in (
            ("bead_names", object),
            ("bead_types", object),
            ("bead_molecule", np.int64),
            ("bead_atom", np.int64),
            ("frame_reference", np.int64),
        )
    }
    atom_owner = np.empty(topology.n_atoms, dtype=np.int64)
    members: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    bonds = []
    for name, mm in mappings.items():
        molecules = np.flatnonzero(names == name)
        if len(molecules) == 0:
            continue
        bead_off, atom_off = first_bead[molecules][:, None], first_atom[molecules][:, None]
        rows = bead_off + np.arange(mm.n_beads)
        ref = np.array([b.frame_reference for b in mm.beads])
        out["bead_names"][rows] = [b.name for b in mm.beads]
        out["bead_types"][rows] = [b.type for b in mm.beads]
        out["bead_molecule"][rows] = molecules[:, None]
        out["bead_atom"][rows] = atom_off + np.array([b.atoms[0] for b in mm.beads])
        out["frame_reference"][rows] = np.where(ref >= 0, bead_off + ref, -1)
        atom_owner[atom_off + np.arange(len(mm.atom_owner))] = bead_off + mm.atom_owner
        local_atoms = np.concatenate([b.atoms for b in mm.beads])
        local_beads = np.concatenate([np.full(len(b.atoms), i) for i, b in enumerate(mm.beads)])
        weights = np.concatenate([b.weights for b in mm.beads])
        members.append(
            ((atom_off + local_atoms).ravel(), (bead_off + local_beads).ravel(), np.tile(weights, len(molecules)))
        )
        bonds.append((bead_off[:, :, None] + mm.bead_bonds[None]).reshape(-1, 2))
    residues = system_residue_numbers(topology)
    return Mapping(
        molecule_types={name: mappings[name] for name, _ in topology.molecules},
        bead_names=out["bead_names"].astype(str),
        bead_types=out["bead_types"].astype(str),
        bead_residue_names=np.asarray(topology.residue_names)[out["bead_atom"]],
        bead_residue_numbers=residues[out["bead_atom"]],
        bead_molecule=out["bead_molecule"],
        bead_atom=out["bead_atom"],
        frame_reference=out["frame_reference"],
        bead_bonds=_sorted_rows(np.concatenate(bonds)),
        atom_owner=atom_owner,
        member_atoms=np.concatenate([a for a, _, _ in members]),
        member_beads=np.concatenate([b for _, b, _ in members]),
        member_weights=np.concatenate([w for _, _, w in members]),
    )


def _sorted_rows(pairs: np.ndarray) -> np.ndarray:
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


# --------------------------------------------------------------------------- gmx-dbm map


def map_to_cg(
    structure: PathLike,
    topology: PathLike,
    mapping: PathLike | Sequence[PathLike] | None,
    output: PathLike,
    trajectory: PathLike | None = None,
    frames: slice = slice(None),
    overwrite: bool = False,
    progress: bool = True,
    allow_renamed: bool = False,
) -> int:
    """Map AA frames (a structure, or a trajectory with it) to CG and write them; returns the
    number of frames written. Bead names and the structure's residue names/numbers are kept.
    Atoms named otherwise than in the topology are refused (`check_names`) unless `allow_renamed`."""
    top = read_topology(topology)
    cg = read_mapping(mapping, top)
    source = FrameSource.of_topology(top, structure, trajectory, frames, allow_renamed=allow_renamed)
    atoms = source.universe.atoms[cg.bead_atom]
    out = FrameOutput(output, cg.bead_names, atoms.resnames, atoms.resids, overwrite=overwrite)
    return len(
        run_frames(source, lambda f: cg.cg_positions(f.positions, f.box), desc="map", output=out, progress=progress)
    )
