"""GROMACS topologies as arrays, read exactly as grompp reads them.

`read_topology` preprocesses the `.top` (includes, `#ifdef`s, macros), checks every line of the
sections it understands (field counts, numbers, function types, atom types, molecule names) so
that errors name the file and line, lets ParmEd resolve parameters from the `*types` sections, and
builds the exclusions the way grompp does: bonds up to `nrexcl` apart plus explicit
`[ exclusions ]` (ParmEd ignores `nrexcl != 3` and its exclusion lists are not used).

All numbers are in GROMACS units: nm, kJ/mol, degrees, e, amu. Atom indices are 0-based over the
whole system, in topology order.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .preprocess import SourceLine, preprocess

KCAL = 4.184  # kJ per kcal: ParmEd stores AMBER units internally

# Supported function types per section; anything else is rejected with file, section and line.
SUPPORTED_FUNCTS = {
    "bonds": {1},
    "angles": {1},
    "dihedrals": {1, 2, 4, 9},
    "pairs": {1},
    "constraints": {1, 2},
    "bondtypes": {1},
    "angletypes": {1},
    "dihedraltypes": {1, 2, 4, 9},
    "pairtypes": {1},
    "constrainttypes": {1, 2},
    "position_restraints": {1},
}
ATOMS_PER_TERM = {
    "bonds": 2,
    "pairs": 2,
    "constraints": 2,
    "angles": 3,
    "dihedrals": 4,
    "bondtypes": 2,
    "pairtypes": 2,
    "constrainttypes": 2,
    "angletypes": 3,
    "position_restraints": 1,
}
MAX_ATOMS = 10**8  # per [ molecules ] line: larger counts are typos (and would take ParmEd hours)
IGNORED_SECTIONS = {"system", "implicit_genborn_params", "cmaptypes"}
KNOWN_SECTIONS = (
    set(SUPPORTED_FUNCTS)
    | IGNORED_SECTIONS
    | {"defaults", "atomtypes", "nonbond_params", "moleculetype", "atoms", "exclusions", "molecules"}
)


@dataclass(frozen=True)
class Terms:
    """One interaction term of the whole system: atom index tuples and their parameters."""

    indices: np.ndarray  # (n, atoms per term) int64
    params: np.ndarray  # (n, parameters per term) float64, GROMACS units
    columns: tuple[str, ...]  # parameter names, e.g. ("b0", "kb")

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class MoleculeType:
    """One `[ moleculetype ]` as written, with 0-based atom indices local to the molecule."""

    name: str
    nrexcl: int
    atom_names: tuple[str, ...]
    atom_types: tuple[str, ...]
    bonds: np.ndarray  # (n, 2) local indices of chemical bonds (bonds and funct-1 constraints)
    exclusions: np.ndarray  # (n, 2) local index pairs i < j, nrexcl and explicit ones together

    @property
    def n_atoms(self) -> int:
        return len(self.atom_names)


@dataclass(frozen=True)
class Topology:
    """A whole GROMACS system, one row per atom in topology order."""

    path: Path
    atom_names: np.ndarray  # (N,) str
    atom_types: np.ndarray  # (N,) str
    type_names: tuple[str, ...]  # distinct atom types in order of `[ atomtypes ]`
    type_index: np.ndarray  # (N,) index into type_names
    elements: np.ndarray  # (N,) str
    masses: np.ndarray  # (N,) amu
    charges: np.ndarray  # (N,) e
    sigma: np.ndarray  # (N,) nm, of the atom's type
    epsilon: np.ndarray  # (N,) kJ/mol, of the atom's type
    residue_numbers: np.ndarray  # (N,) as written in `[ atoms ]`
    residue_names: np.ndarray  # (N,) str
    molecule_index: np.ndarray  # (N,) which molecule (0-based) each atom belongs to
    molecule_types: dict[str, MoleculeType]
    molecules: tuple[tuple[str, int], ...]  # (moleculetype name, first atom) per molecule
    c6: np.ndarray  # (T, T) kJ/mol nm^6, by type index; `[ nonbond_params ]` applied
    c12: np.ndarray  # (T, T) kJ/mol nm^12
    bonds: Terms
    angles: Terms
    propers: Terms  # funct 1 and 9 (one row per term of a funct 9 series)
    impropers: Terms  # funct 2, harmonic
    periodic_impropers: Terms  # funct 4
    pairs: Terms  # `[ pairs ]` funct 1: c6, c12 of the pair; Coulomb scaled by fudge_qq
    constraints: Terms  # funct 1 and 2: length
    exclusions: np.ndarray  # (n, 2) i < j, sorted and unique
    fudge_qq: float
    comb_rule: int

    @property
    def n_atoms(self) -> int:
        return len(self.atom_names)

    def molecule_slice(self, molecule: int) -> slice:
        """Atom range of one molecule."""
        first = self.molecules[molecule][1]
        return slice(first, first + self.molecule_types[self.molecules[molecule][0]].n_atoms)


def read_topology(
    path: str | os.PathLike,
    defines: dict[str, str] | None = None,
    include_dirs: list[Path] | None = None,
) -> Topology:
    """Read a GROMACS `.top` into a `Topology` (GROMACS units, 0-based system-wide indices)."""
    lines = preprocess(path, defines, include_dirs)
    scan = _scan(lines, Path(path))
    structure = _parmed_structure(lines, Path(path))
    return _build(Path(path), scan, structure)


def system_residue_numbers(topology: Topology) -> np.ndarray:
    """Residues numbered 1, 2, ... over the system: a new one wherever the molecule or the
    topology's residue number changes (as `.gro` files number single-residue molecules)."""
    new = np.r_[True, (np.diff(topology.molecule_index) != 0) | (np.diff(topology.residue_numbers) != 0)]
    return np.cumsum(new)


# --------------------------------------------------------------------------- line-level checks


@dataclass
class _ScannedMolecule:
    name: str
    nrexcl: int
    atom_names: list[str] = field(default_factory=list)
    atom_types: list[str] = field(default_factory=list)
    bonds: list[tuple[int, int]] = field(default_factory=list)
    exclusions: list[tuple[int, ...]] = field(default_factory=list)
    pairs: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class _Scan:
    comb_rule: int = 1
    fudge_lj: float = 1.0
    fudge_qq: float = 1.0
    atomtypes: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (V, W)
    nonbond_params: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    molecule_types: dict[str, _ScannedMolecule] = field(default_factory=dict)
    molecules: list[tuple[str, int]] = field(default_factory=list)


def _number(word: str, kind, line: SourceLine, section: str, what: str):
    try:
        return kind(word)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise InputError(
            f"malformed number '{word}' for {what} (expected {expected})",
            line.path,
            line.lineno,
            section,
        ) from None


def _fields(line: SourceLine, section: str, minimum: int, what: str) -> list[str]:
    words = line.text.split()
    if len(words) < minimum:
        raise InputError(
            f"expected at least {minimum} fields ({what}), found {len(words)}",
            line.path,
            line.lineno,
            section,
        )
    return words


def _scan(lines: list[SourceLine], top: Path) -> _Scan:
    scan = _Scan()
    section = None
    molecule: _ScannedMolecule | None = None
    for line in lines:
        if line.text.startswith("["):
            section = line.text.strip("[] \t").lower()
            if section not in KNOWN_SECTIONS:
                raise InputError(f"unsupported section [ {section} ]", line.path, line.lineno)
            continue
        if section is None:
            raise InputError("data before the first [ section ]", line.path, line.lineno)
        if section == "defaults":
            words = _fields(line, section, 2, "nbfunc comb-rule")
            scan.comb_rule = _number(words[1], int, line, section, "comb-rule")
            if scan.comb_rule not in (1, 2, 3):
                raise InputError(f"comb-rule {scan.comb_rule} (expected 1, 2 or 3)", line.path, line.lineno, section)
            if len(words) >= 5:
                scan.fudge_lj = _number(words[3], float, line, section, "fudgeLJ")
                scan.fudge_qq = _number(words[4], float, line, section, "fudgeQQ")
        elif section == "atomtypes":
            words = _fields(line, section, 6, "name mass charge ptype V W")
            for word, what in zip(words[-5:-3], ("mass", "charge")):
                _number(word, float, line, section, what)
            scan.atomtypes[words[0]] = (
                _number(words[-2], float, line, section, "V (sigma or c6)"),
                _number(words[-1], float, line, section, "W (epsilon or c12)"),
            )
        elif section == "nonbond_params":
            words = _fields(line, section, 5, "type_i type_j funct V W")
            _check_funct(words[2], {1}, line, section)
            scan.nonbond_params[(words[0], words[1])] = (
                _number(words[3], float, line, section, "V"),
                _number(words[4], float, line, section, "W"),
            )
        elif section == "moleculetype":
            words = _fields(line, section, 2, "name nrexcl")
            molecule = _ScannedMolecule(words[0], _number(words[1], int, line, section, "nrexcl"))
            if molecule.name in scan.molecule_types:
                raise InputError(f"moleculetype '{molecule.name}' defined twice", line.path, line.lineno, section)
            scan.molecule_types[molecule.name] = molecule
        elif section == "molecules":
            words = _fields(line, section, 2, "name count")
            if words[0] not in scan.molecule_types:
                raise InputError(f"molecule '{words[0]}' has no [ moleculetype ]", line.path, line.lineno, section)
            count = _number(words[1], int, line, section, "count")
            if not 0 <= count <= MAX_ATOMS // max(len(scan.molecule_types[words[0]].atom_names), 1):
                raise InputError(f"{count} molecules: more than {MAX_ATOMS:.0e} atoms", line.path, line.lineno, section)
            scan.molecules.append((words[0], count))
        elif section in IGNORED_SECTIONS:
            continue
        elif section in SUPPORTED_FUNCTS and section.endswith("types"):
            n = ATOMS_PER_TERM.get(section, 4 if section == "dihedraltypes" else 2)
            words = _fields(line, section, n + 1, f"{n} atom types and funct")
            # dihedraltypes may name 2 or 4 atom types; the funct follows them
            funct_at = n if _is_int(words[n]) or section != "dihedraltypes" else 2
            _check_funct(words[funct_at], SUPPORTED_FUNCTS[section], line, section)
            for word in words[funct_at + 1 :]:
                _number(word, float, line, section, "parameter")
        else:
            if molecule is None:
                raise InputError(f"[ {section} ] before any [ moleculetype ]", line.path, line.lineno)
            _scan_molecule_line(scan, molecule, section, line)
    if not scan.molecules:
        raise InputError("no [ molecules ] section: the system is empty", top)
    return scan


def _is_int(word: str) -> bool:
    try:
        int(word)
        return True
    except ValueError:
        return False


def _check_funct(word: str, supported: set[int], line: SourceLine, section: str) -> int:
    funct = _number(word, int, line, section, "function type")
    if funct not in supported:
        raise InputError(
            f"unsupported function type {funct} (supported: {', '.join(map(str, sorted(supported)))})",
            line.path,
            line.lineno,
            section,
        )
    return funct


def _scan_molecule_line(scan: _Scan, molecule: _ScannedMolecule, section: str, line: SourceLine):
    if section == "atoms":
        words = _fields(line, section, 5, "nr type resnr residue atom")
        nr = _number(words[0], int, line, section, "atom number")
        if nr != len(molecule.atom_names) + 1:
            raise InputError(
                f"atom number {nr} out of sequence (expected {len(molecule.atom_names) + 1})",
                line.path,
                line.lineno,
                section,
            )
        if words[1] not in scan.atomtypes:
            raise InputError(f"unknown atom type '{words[1]}' (not in [ atomtypes ])", line.path, line.lineno, section)
        _number(words[2], int, line, section, "residue number")
        for word, what in zip(words[6:8], ("charge", "mass")):
            _number(word, float, line, section, what)
        molecule.atom_names.append(words[4])
        molecule.atom_types.append(words[1])
        return
    if section == "exclusions":
        words = line.text.split()
        atoms = tuple(_atom_index(w, molecule, line, section) for w in words)
        molecule.exclusions.append(atoms)
        return
    n = ATOMS_PER_TERM.get(section, 4)
    words = _fields(line, section, n + 1, f"{n} atom numbers and funct")
    atoms = tuple(_atom_index(w, molecule, line, section) for w in words[:n])
    funct = _check_funct(words[n], SUPPORTED_FUNCTS[section], line, section)
    for word in words[n + 1 :]:
        _number(word, float, line, section, "parameter")
    if section == "bonds" or (section == "constraints" and funct == 1):
        molecule.bonds.append(atoms)
    elif section == "pairs":
        molecule.pairs.append(atoms)


def _atom_index(word: str, molecule: _ScannedMolecule, line: SourceLine, section: str) -> int:
    nr = _number(word, int, line, section, "atom number")
    if not 1 <= nr <= len(molecule.atom_names):
        raise InputError(
            f"atom {nr} does not exist in moleculetype '{molecule.name}' ({len(molecule.atom_names)} atoms)",
            line.path,
            line.lineno,
            section,
        )
    return nr - 1


# --------------------------------------------------------------------------- parameters (ParmEd)


def _parmed_structure(lines: list[SourceLine], top: Path):
    """Let ParmEd resolve parameters from the already preprocessed, already checked lines."""
    import parmed

    text = "\n".join(line.text for line in lines) + "\n"
    with tempfile.TemporaryDirectory() as tmp:
        flat = Path(tmp) / "flat.top"
        flat.write_text(text)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return parmed.gromacs.GromacsTopologyFile(str(flat))
        except Exception as exc:  # ParmEd raises assorted types for missing parameters
            raise InputError(f"could not assign force-field parameters: {exc}", top) from None


# --------------------------------------------------------------------------- assembly


def _build(top: Path, scan: _Scan, structure) -> Topology:
    molecules, molecule_index, first = [], [], 0
    molecule_types = {name: _molecule_type(m) for name, m in scan.molecule_types.items()}
    for name, count in scan.molecules:
        for _ in range(count):
            molecules.append((name, first))
            molecule_index.append(np.full(molecule_types[name].n_atoms, len(molecules) - 1))
            first += molecule_types[name].n_atoms
    if first != len(structure.atoms):
        raise InputError(f"ParmEd built {len(structure.atoms)} atoms, the topology lists {first}", top)

    atoms = structure.atoms
    type_names = tuple(scan.atomtypes)
    type_of = {t: i for i, t in enumerate(type_names)}
    atom_types = np.array([a.type for a in atoms])
    type_index = np.array([type_of[t] for t in atom_types], dtype=np.int64)
    c6, c12, sigma_t, eps_t = _lj_tables(scan, type_names)

    exclusions = np.concatenate([molecule_types[name].exclusions + start for name, start in molecules]).astype(np.int64)
    pair_rows = np.concatenate(
        [
            np.asarray(scan.molecule_types[name].pairs, dtype=np.int64).reshape(-1, 2) + start
            for name, start in molecules
        ]
    )
    return Topology(
        path=top,
        atom_names=np.array([a.name for a in atoms]),
        atom_types=atom_types,
        type_names=type_names,
        type_index=type_index,
        elements=np.array([_element(a) for a in atoms]),
        masses=np.array([a.mass for a in atoms], dtype=np.float64),
        charges=np.array([a.charge for a in atoms], dtype=np.float64),
        sigma=sigma_t[type_index],
        epsilon=eps_t[type_index],
        residue_numbers=np.array([a.residue.number for a in atoms], dtype=np.int64),
        residue_names=np.array([a.residue.name for a in atoms]),
        molecule_index=np.concatenate(molecule_index),
        molecule_types=molecule_types,
        molecules=tuple(molecules),
        c6=c6,
        c12=c12,
        bonds=_bonds(structure),
        angles=_angles(structure),
        propers=_dihedrals(structure, improper=False),
        impropers=_impropers(structure),
        periodic_impropers=_dihedrals(structure, improper=True),
        pairs=_pairs(structure, pair_rows, scan, c6, c12, type_index),
        constraints=_constraints(structure),
        exclusions=exclusions,
        fudge_qq=scan.fudge_qq,
        comb_rule=scan.comb_rule,
    )


def _molecule_type(m: _ScannedMolecule) -> MoleculeType:
    n = len(m.atom_names)
    bonds = np.asarray(m.bonds, dtype=np.int64).reshape(-1, 2)
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for i, j in bonds:
        neighbours[i].add(j)
        neighbours[j].add(i)
    excluded: set[tuple[int, int]] = set()
    for start in range(n):
        frontier, seen = {start}, {start}
        for _ in range(m.nrexcl):
            frontier = {k for i in frontier for k in neighbours[i]} - seen
            seen |= frontier
        excluded |= {(start, k) for k in seen if k > start}
    for atoms in m.exclusions:  # first atom excluded from each of the others, as grompp does
        excluded |= {(min(atoms[0], k), max(atoms[0], k)) for k in atoms[1:] if k != atoms[0]}
    exclusions = np.array(sorted(excluded), dtype=np.int64).reshape(-1, 2)
    return MoleculeType(m.name, m.nrexcl, tuple(m.atom_names), tuple(m.atom_types), bonds, exclusions)


def _lj_tables(scan: _Scan, type_names: tuple[str, ...]):
    v = np.array([scan.atomtypes[t][0] for t in type_names])
    w = np.array([scan.atomtypes[t][1] for t in type_names])
    if scan.comb_rule == 1:  # V = c6, W = c12
        c6, c12 = np.sqrt(np.outer(v, v)), np.sqrt(np.outer(w, w))
        with np.errstate(divide="ignore", invalid="ignore"):
            sigma = np.where(v > 0, (w / v) ** (1 / 6), 0.0)
            eps = np.where(w > 0, v**2 / (4 * w), 0.0)
    else:  # V = sigma, W = epsilon
        sig = (v[:, None] + v[None, :]) / 2 if scan.comb_rule == 2 else np.sqrt(np.outer(v, v))
        e = np.sqrt(np.outer(w, w))
        c6, c12 = 4 * e * sig**6, 4 * e * sig**12
        sigma, eps = v, w
    index = {t: i for i, t in enumerate(type_names)}
    for (a, b), (pv, pw) in scan.nonbond_params.items():
        if a in index and b in index:
            i, j = index[a], index[b]
            pc6, pc12 = (pv, pw) if scan.comb_rule == 1 else (4 * pw * pv**6, 4 * pw * pv**12)
            c6[i, j] = c6[j, i] = pc6
            c12[i, j] = c12[j, i] = pc12
    return c6, c12, np.asarray(sigma, dtype=np.float64), np.asarray(eps, dtype=np.float64)


def _element(atom) -> str:
    from parmed.periodic_table import Element

    return Element[atom.atomic_number] if atom.atomic_number > 0 else "X"


def _terms(rows: list[tuple], n_atoms: int, columns: tuple[str, ...]) -> Terms:
    if not rows:
        return Terms(np.zeros((0, n_atoms), np.int64), np.zeros((0, len(columns))), columns)
    indices = np.array([r[:n_atoms] for r in rows], dtype=np.int64)
    params = np.array([r[n_atoms:] for r in rows], dtype=np.float64)
    return Terms(indices, params, columns)


def _bonds(structure) -> Terms:
    rows = [
        (b.atom1.idx, b.atom2.idx, b.type.req / 10, b.type.k * 2 * KCAL * 100) for b in structure.bonds if b.funct == 1
    ]
    return _terms(rows, 2, ("b0", "kb"))


def _constraints(structure) -> Terms:
    rows = [
        (b.atom1.idx, b.atom2.idx, b.type.req / 10)
        for b in structure.bonds
        if b.funct in (-1, -2) or getattr(b, "constraint", False)
    ]
    return _terms(rows, 2, ("b0",))


def _angles(structure) -> Terms:
    rows = [(a.atom1.idx, a.atom2.idx, a.atom3.idx, a.type.theteq, a.type.k * 2 * KCAL) for a in structure.angles]
    return _terms(rows, 3, ("theta0", "k"))


def _dihedrals(structure, improper: bool) -> Terms:
    rows = []
    for d in structure.dihedrals:
        if bool(d.improper) != improper:
            continue
        series = d.type if isinstance(d.type, (list, tuple)) or hasattr(d.type, "__iter__") else [d.type]
        for term in series:
            rows.append((d.atom1.idx, d.atom2.idx, d.atom3.idx, d.atom4.idx, term.phase, term.phi_k * KCAL, term.per))
    return _terms(rows, 4, ("phi_s", "k", "multiplicity"))


def _impropers(structure) -> Terms:
    rows = [
        (d.atom1.idx, d.atom2.idx, d.atom3.idx, d.atom4.idx, d.type.psi_eq, d.type.psi_k * 2 * KCAL)
        for d in structure.impropers
    ]
    return _terms(rows, 4, ("xi0", "k"))


def _pairs(structure, pair_rows: np.ndarray, scan: _Scan, c6, c12, type_index) -> Terms:
    """`[ pairs ]` of the topology only (ParmEd adds zero-strength 1-4 pairs of its own)."""
    by_atoms = {}
    for adjust in structure.adjusts:
        i, j = sorted((adjust.atom1.idx, adjust.atom2.idx))
        by_atoms[(i, j)] = adjust.type
    rows = []
    for i, j in pair_rows:
        t = by_atoms.get((min(i, j), max(i, j)))
        if t is not None and t.epsilon > 0:
            sigma = t.sigma / 10
            eps = t.epsilon * KCAL
            rows.append((i, j, 4 * eps * sigma**6, 4 * eps * sigma**12))
        else:  # gen-pairs: the normal combination scaled by fudgeLJ
            ti, tj = type_index[i], type_index[j]
            rows.append((i, j, scan.fudge_lj * c6[ti, tj], scan.fudge_lj * c12[ti, tj]))
    return _terms(rows, 2, ("c6", "c12"))
