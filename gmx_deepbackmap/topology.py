"""GROMACS topologies as arrays, read exactly as grompp reads them.

`read_topology` preprocesses the `.top` (includes, `#ifdef`s, macros), checks every line of the
sections it understands (field counts, numbers, function types, atom types, molecule names) so
that errors name the file and line, resolves parameters from the `*types` sections by grompp's
rules (bonded atom types; dihedral types with `X` wildcards: the first type with the most exact
matches, and for function type 9 the lines after it with the same atom types; later
bond/angle/pair types override earlier ones; `[ pairs ]` from `[ pairtypes ]`, else generated
from the non-bonded parameters times fudgeLJ when gen-pairs is on) and builds the exclusions the
way grompp does: chemical bonds up to `nrexcl` apart plus explicit `[ exclusions ]`. The bonded
forms themselves are defined once, in `forms`.

All numbers are in GROMACS units: nm, kJ/mol, degrees, e, amu. Atom indices are 0-based over the
whole system, in topology order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .forms import FORM_OF_FUNCT, FORMS, PARAMETER_COUNT, fourier_to_ryckaert_bellemans
from .preprocess import SourceLine, preprocess

# Sections read, and the function types supported in each (the bonded ones: those of `forms`);
# anything else is rejected with file, section and line. Bonds 5 (connections) only make exclusions.
_FORM_FUNCTS = {
    section: {funct for (where, funct) in FORM_OF_FUNCT if where == section}
    for section in ("bonds", "angles", "dihedrals")
}
SUPPORTED_FUNCTS = {
    "bonds": _FORM_FUNCTS["bonds"] | {5},
    "angles": _FORM_FUNCTS["angles"],
    "dihedrals": _FORM_FUNCTS["dihedrals"],
    "pairs": {1},
    "constraints": {1, 2},
    "settles": {1},
    "bondtypes": _FORM_FUNCTS["bonds"],
    "angletypes": _FORM_FUNCTS["angles"],
    "dihedraltypes": _FORM_FUNCTS["dihedrals"],
    "pairtypes": {1},
    "constrainttypes": {1, 2},
    "position_restraints": {1},
}
ATOMS_PER_TERM = {
    "bonds": 2,
    "pairs": 2,
    "constraints": 2,
    "settles": 1,
    "angles": 3,
    "dihedrals": 4,
    "bondtypes": 2,
    "pairtypes": 2,
    "constrainttypes": 2,
    "angletypes": 3,
    "dihedraltypes": 4,
    "position_restraints": 1,
}
MAX_ATOMS = 10**8  # per [ molecules ] line: larger counts are typos (and would take ParmEd hours)
IGNORED_SECTIONS = {"system", "implicit_genborn_params", "cmaptypes"}
KNOWN_SECTIONS = (
    set(SUPPORTED_FUNCTS)
    | IGNORED_SECTIONS
    | {"defaults", "atomtypes", "nonbond_params", "moleculetype", "atoms", "exclusions", "molecules"}
)
# Sections grompp knows that the force field cannot evaluate, with what to do instead
UNSUPPORTED_SECTIONS = {
    "cmap": "CMAP correction maps are not supported (make the topology with `gmx pdb2gmx -nocmap`)",
    "virtual_sites1": "virtual sites are not supported",
    "virtual_sites2": "virtual sites are not supported",
    "virtual_sites3": "virtual sites are not supported",
    "virtual_sites4": "virtual sites are not supported",
    "virtual_sitesn": "virtual sites are not supported",
    "dummies2": "virtual sites are not supported",
    "dummies3": "virtual sites are not supported",
    "dummies4": "virtual sites are not supported",
    "dummiesn": "virtual sites are not supported",
    "polarization": "polarisation (shells) is not supported",
    "water_polarization": "polarisation (shells) is not supported",
    "thole_polarization": "polarisation (shells) is not supported",
    "distance_restraints": "distance restraints are not supported",
    "dihedral_restraints": "dihedral restraints are not supported",
    "orientation_restraints": "orientation restraints are not supported",
    "angle_restraints": "angle restraints are not supported",
    "angle_restraints_z": "angle restraints are not supported",
    "intermolecular_interactions": "intermolecular interactions are not supported",
}
CHEMICAL_BOND_FUNCTS = {"bonds": {1, 2, 5}, "constraints": {1}}  # what nrexcl counts as bonds
WILDCARD = "X"  # dihedraltypes: matches any atom type


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
    bonds: np.ndarray  # (n, 2) local indices of chemical bonds (bonds, funct-1 constraints, settles)
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
    bonded: dict[str, Terms]  # every form of `forms.FORMS` by name (empty where the topology has none)
    pairs: Terms  # `[ pairs ]` funct 1: c6, c12 of the pair; Coulomb scaled by fudge_qq
    constraints: Terms  # `[ constraints ]` funct 1 and 2 and the distances of `[ settles ]`: length
    exclusions: np.ndarray  # (n, 2) i < j, sorted and unique
    fudge_qq: float
    comb_rule: int

    @property
    def n_atoms(self) -> int:
        return len(self.atom_names)

    @property
    def bonds(self) -> Terms:
        """Every bond with an energy (harmonic and GROMOS-96): b0, kb."""
        return _joined(self.bonded["bond"], self.bonded["g96_bond"])

    @property
    def angles(self) -> Terms:
        """Every angle (harmonic, GROMOS-96 and Urey-Bradley): theta0, k."""
        return _joined(self.bonded["angle"], self.bonded["g96_angle"], self.bonded["urey_bradley"])

    @property
    def propers(self) -> Terms:
        """Periodic proper dihedrals (funct 1 and 9)."""
        return self.bonded["proper"]

    @property
    def impropers(self) -> Terms:
        """Harmonic impropers (funct 2)."""
        return self.bonded["improper"]

    @property
    def periodic_impropers(self) -> Terms:
        """Periodic impropers (funct 4)."""
        return self.bonded["periodic_improper"]

    def molecule_slice(self, molecule: int) -> slice:
        """Atom range of one molecule."""
        first = self.molecules[molecule][1]
        return slice(first, first + self.molecule_types[self.molecules[molecule][0]].n_atoms)


def _joined(*terms: Terms) -> Terms:
    """Rows of several forms with their first two parameter columns (the geometric ones first)."""
    return Terms(
        np.concatenate([t.indices for t in terms]),
        np.concatenate([t.params[:, :2] for t in terms]),
        terms[0].columns[:2],
    )


def read_topology(
    path: str | os.PathLike,
    defines: dict[str, str] | None = None,
    include_dirs: list[Path] | None = None,
) -> Topology:
    """Read a GROMACS `.top` into a `Topology` (GROMACS units, 0-based system-wide indices)."""
    lines = preprocess(path, defines, include_dirs)
    return _build(Path(path), _scan(lines, Path(path)))


def system_residue_numbers(topology: Topology) -> np.ndarray:
    """Residues numbered 1, 2, ... over the system: a new one wherever the molecule or the
    topology's residue number changes (as `.gro` files number single-residue molecules)."""
    new = np.r_[True, (np.diff(topology.molecule_index) != 0) | (np.diff(topology.residue_numbers) != 0)]
    return np.cumsum(new)


# --------------------------------------------------------------------------- line-level checks


@dataclass(frozen=True)
class _AtomType:
    bonded: str  # the bonded type (OPLS-AA: e.g. CT for opls_135), else the name itself
    atomic_number: int  # 0 where not given
    mass: float
    charge: float
    v: float  # sigma (comb-rule 2, 3) or c6 (comb-rule 1)
    w: float  # epsilon or c12


@dataclass(frozen=True)
class _Atom:
    name: str
    type: str
    residue_number: int
    residue_name: str
    charge: float
    mass: float


@dataclass(frozen=True)
class _Interaction:
    """One line of a bonded section of a molecule: local atoms, funct, parameters as written."""

    section: str
    atoms: tuple[int, ...]
    funct: int
    params: tuple[float, ...]
    line: SourceLine


@dataclass
class _ScannedMolecule:
    name: str
    nrexcl: int
    atoms: list[_Atom] = field(default_factory=list)
    interactions: list[_Interaction] = field(default_factory=list)
    exclusions: list[tuple[int, ...]] = field(default_factory=list)


@dataclass
class _DihedralType:
    funct: int  # 1 and 9 are one kind of dihedral type, as in grompp
    types: tuple[str, ...]  # WILDCARD matches any type
    rows: list[tuple[float, ...]]  # funct 9: the consecutive lines with these types


@dataclass
class _Scan:
    comb_rule: int = 1
    gen_pairs: bool = False
    fudge_lj: float = 1.0
    fudge_qq: float = 1.0
    atomtypes: dict[str, _AtomType] = field(default_factory=dict)
    nonbond_params: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    # bondtypes, angletypes, constrainttypes, pairtypes: (funct, *types) -> parameters, both directions
    types: dict[str, dict[tuple, tuple[float, ...]]] = field(default_factory=dict)
    dihedraltypes: list[_DihedralType] = field(default_factory=list)
    dihedral_index: dict[tuple, _DihedralType] = field(default_factory=dict)  # (funct, types) -> entry
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
            if section in UNSUPPORTED_SECTIONS:
                raise InputError(UNSUPPORTED_SECTIONS[section], line.path, line.lineno, section)
            if section not in KNOWN_SECTIONS:
                raise InputError(f"unsupported section [ {section} ]", line.path, line.lineno)
            continue
        if section is None:
            if line.text.startswith("*"):  # a banner of '*' lines (AMBER, CHARMM ports): grompp skips it
                continue
            raise InputError("data before the first [ section ]", line.path, line.lineno)
        if section == "defaults":
            _scan_defaults(scan, line)
        elif section == "atomtypes":
            name, atomtype = _atomtype(line)
            scan.atomtypes[name] = atomtype
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
            if count < 0:
                raise InputError(f"{count} molecules (expected 0 or more)", line.path, line.lineno, section)
            if count > MAX_ATOMS // max(len(scan.molecule_types[words[0]].atoms), 1):
                raise InputError(f"{count} molecules: more than {MAX_ATOMS:.0e} atoms", line.path, line.lineno, section)
            scan.molecules.append((words[0], count))
        elif section in IGNORED_SECTIONS:
            continue
        elif section == "dihedraltypes":
            _scan_dihedraltype(scan, line)
        elif section.endswith("types"):
            n = ATOMS_PER_TERM[section]
            words = _fields(line, section, n + 1, f"{n} atom types and funct")
            funct = _check_funct(words[n], SUPPORTED_FUNCTS[section], line, section)
            params = tuple(_number(w, float, line, section, "parameter") for w in words[n + 1 :])
            table = scan.types.setdefault(section, {})
            table[(funct, *words[:n])] = table[(funct, *words[:n][::-1])] = params  # a later line overrides
        else:
            if molecule is None:
                raise InputError(f"[ {section} ] before any [ moleculetype ]", line.path, line.lineno)
            _scan_molecule_line(scan, molecule, section, line)
    if not scan.molecules:
        raise InputError("no [ molecules ] section: the system is empty", top)
    return scan


def _scan_defaults(scan: _Scan, line: SourceLine) -> None:
    section = "defaults"
    words = _fields(line, section, 2, "nbfunc comb-rule")
    if _number(words[0], int, line, section, "nbfunc") != 1:
        raise InputError(f"nbfunc {words[0]}: only Lennard-Jones (1) is supported", line.path, line.lineno, section)
    scan.comb_rule = _number(words[1], int, line, section, "comb-rule")
    if scan.comb_rule not in (1, 2, 3):
        raise InputError(f"comb-rule {scan.comb_rule} (expected 1, 2 or 3)", line.path, line.lineno, section)
    if len(words) >= 3:
        if words[2].lower() not in ("yes", "no"):
            raise InputError(f"gen-pairs '{words[2]}' (expected yes or no)", line.path, line.lineno, section)
        scan.gen_pairs = words[2].lower() == "yes"
    if len(words) >= 5:
        scan.fudge_lj = _number(words[3], float, line, section, "fudgeLJ")
        scan.fudge_qq = _number(words[4], float, line, section, "fudgeQQ")


def _atomtype(line: SourceLine) -> tuple[str, _AtomType]:
    """An `[ atomtypes ]` line: name [bonded type] [atomic number] mass charge ptype V W, the
    optional columns recognised by where the one-letter particle type stands, as grompp does."""
    section = "atomtypes"
    words = _fields(line, section, 6, "name mass charge ptype V W")
    ptype = next((k for k in (3, 5, 4) if k < len(words) and len(words[k]) == 1 and words[k].isalpha()), None)
    if ptype is None or len(words) < ptype + 3:
        raise InputError(
            "expected name [bonded type] [atomic number] mass charge ptype V W", line.path, line.lineno, section
        )
    bonded, atomic_number = words[0], 0
    if ptype == 5 or (ptype == 4 and words[1][0].isalpha()):
        bonded = words[1]
    if ptype == 5 or (ptype == 4 and not words[1][0].isalpha()):
        atomic_number = _number(words[ptype - 3], int, line, section, "atomic number")
    mass, charge, v, w = (
        _number(words[k], float, line, section, what)
        for k, what in zip(
            (ptype - 2, ptype - 1, ptype + 1, ptype + 2), ("mass", "charge", "V (sigma or c6)", "W (epsilon or c12)")
        )
    )
    return words[0], _AtomType(bonded, atomic_number, mass, charge, v, w)


def _scan_dihedraltype(scan: _Scan, line: SourceLine) -> None:
    """A `[ dihedraltypes ]` line of 4 atom types, or of 2 (the middle ones of a proper, the outer
    ones of an improper funct 2) when the third field is a one-digit funct, as grompp reads it."""
    section = "dihedraltypes"
    words = _fields(line, section, 3, "atom types and funct")
    two = len(words[2]) == 1 and words[2].isdigit()
    n = 2 if two else 4
    words = _fields(line, section, n + 1, f"{n} atom types and funct")
    funct = _check_funct(words[n], SUPPORTED_FUNCTS[section], line, section)
    params = tuple(_number(w, float, line, section, "parameter") for w in words[n + 1 :])
    types = tuple(words[:n])
    if two:
        a, b = types
        types = (a, WILDCARD, WILDCARD, b) if funct == 2 else (WILDCARD, a, b, WILDCARD)
    kind = 1 if funct == 9 else funct
    previous = scan.dihedraltypes[-1] if scan.dihedraltypes else None
    if funct == 9 and previous is not None and previous.funct == kind and previous.types == types:
        previous.rows.append(params)  # one more term of the same multi-term dihedral type
        return
    earlier = scan.dihedral_index.get((kind, types)) or scan.dihedral_index.get((kind, types[::-1]))
    if earlier is not None:
        earlier.rows = [params]  # a later definition of the same types overrides, as in grompp
        return
    scan.dihedraltypes.append(_DihedralType(kind, types, [params]))
    scan.dihedral_index[(kind, types)] = scan.dihedraltypes[-1]


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
        molecule.atoms.append(_atom(scan, molecule, line))
        return
    if section == "exclusions":
        words = line.text.split()
        atoms = tuple(_atom_index(w, molecule, line, section) for w in words)
        molecule.exclusions.append(atoms)
        return
    n = ATOMS_PER_TERM[section]
    words = _fields(line, section, n + 1, f"{n} atom numbers and funct")
    atoms = tuple(_atom_index(w, molecule, line, section) for w in words[:n])
    funct = _check_funct(words[n], SUPPORTED_FUNCTS[section], line, section)
    params = tuple(_number(w, float, line, section, "parameter") for w in words[n + 1 :])
    if section == "settles" and (len(params) < 2 or atoms[0] + 2 >= len(molecule.atoms)):
        raise InputError("expected O funct doh dhh, the hydrogens after O", line.path, line.lineno, section)
    if section != "position_restraints":
        molecule.interactions.append(_Interaction(section, atoms, funct, params, line))


def _atom(scan: _Scan, molecule: _ScannedMolecule, line: SourceLine) -> _Atom:
    """An `[ atoms ]` line: nr type resnr residue atom [cgnr [charge [mass]]], charge and mass
    defaulting to the atom type's."""
    section = "atoms"
    words = _fields(line, section, 5, "nr type resnr residue atom")
    nr = _number(words[0], int, line, section, "atom number")
    if nr != len(molecule.atoms) + 1:
        raise InputError(
            f"atom number {nr} out of sequence (expected {len(molecule.atoms) + 1})",
            line.path,
            line.lineno,
            section,
        )
    atomtype = scan.atomtypes.get(words[1])
    if atomtype is None:
        raise InputError(f"unknown atom type '{words[1]}' (not in [ atomtypes ])", line.path, line.lineno, section)
    residue = _number(words[2], int, line, section, "residue number")
    charge = _number(words[6], float, line, section, "charge") if len(words) > 6 else atomtype.charge
    mass = _number(words[7], float, line, section, "mass") if len(words) > 7 else atomtype.mass
    return _Atom(words[4], words[1], residue, words[3], charge, mass)


def _atom_index(word: str, molecule: _ScannedMolecule, line: SourceLine, section: str) -> int:
    nr = _number(word, int, line, section, "atom number")
    if not 1 <= nr <= len(molecule.atoms):
        raise InputError(
            f"atom {nr} does not exist in moleculetype '{molecule.name}' ({len(molecule.atoms)} atoms)",
            line.path,
            line.lineno,
            section,
        )
    return nr - 1


# --------------------------------------------------------------------------- parameters (grompp's rules)


@dataclass
class _Resolved:
    """The interactions of one molecule type with their parameters, local atom indices."""

    bonded: dict[str, list[tuple]] = field(default_factory=lambda: {name: [] for name in FORMS})
    pairs: list[tuple] = field(default_factory=list)
    constraints: list[tuple] = field(default_factory=list)
    chemical_bonds: list[tuple[int, int]] = field(default_factory=list)


class _Parameters:
    """grompp's parameter lookup for the bonded interactions of molecule types."""

    def __init__(self, scan: _Scan, c6: np.ndarray, c12: np.ndarray, type_of: dict[str, int]):
        self.scan, self.c6, self.c12, self.type_of = scan, c6, c12, type_of
        self._dihedral_cache: dict[tuple, _DihedralType | None] = {}  # (kind, bonded types) -> best match

    def bonded_type(self, atomtype: str) -> str:
        return self.scan.atomtypes[atomtype].bonded

    def resolve(self, molecule: _ScannedMolecule) -> _Resolved:
        out = _Resolved()
        types = [atom.type for atom in molecule.atoms]
        for term in molecule.interactions:
            atom_types = tuple(types[a] for a in term.atoms)
            if term.section == "settles":
                self._settle(term, out)
            elif term.section == "pairs":
                out.pairs.append((*term.atoms, *self._pair(term, atom_types)))
            elif term.section == "constraints":
                b0 = self._lookup(term, atom_types, 1, ("constrainttypes", "bondtypes"))[0]
                out.constraints.append((*term.atoms, b0[0]))
                if term.funct == 1:
                    out.chemical_bonds.append(term.atoms)
            else:
                self._bonded(term, atom_types, out)
        return out

    def _settle(self, term: _Interaction, out: _Resolved) -> None:
        o = term.atoms[0]
        doh, dhh = term.params[:2]
        out.constraints += [(o, o + 1, doh), (o, o + 2, doh), (o + 1, o + 2, dhh)]
        out.chemical_bonds += [(o, o + 1), (o, o + 2)]

    def _bonded(self, term: _Interaction, atom_types: tuple[str, ...], out: _Resolved) -> None:
        if term.section == "bonds":
            out.chemical_bonds.append(term.atoms)
            if term.funct == 5:  # a connection: exclusions only
                return
        name = FORM_OF_FUNCT[(term.section, term.funct)]
        count = PARAMETER_COUNT[(term.section, term.funct)]
        if term.section == "dihedrals":
            rows = self._dihedral(term, atom_types, count)
        else:
            rows = self._lookup(term, atom_types, count, (term.section[:-1] + "types",))
        for params in rows:
            if name == "fourier":
                params = fourier_to_ryckaert_bellemans(*params)
            out.bonded[name].append((*term.atoms, *params))

    def _given(self, term: _Interaction, count: int) -> tuple[float, ...] | None:
        """The parameters written on the line (A state), None where it names none."""
        if not term.params:
            return None
        if len(term.params) < count:
            raise InputError(
                f"expected {count} parameters for function type {term.funct}, found {len(term.params)}",
                term.line.path,
                term.line.lineno,
                term.section,
            )
        return term.params[:count]

    def _lookup(
        self, term: _Interaction, atom_types: tuple[str, ...], count: int, sections: tuple[str, ...]
    ) -> list[tuple[float, ...]]:
        """Bond, angle or constraint parameters: from the line, else the `*types` entry of the
        same funct for the bonded types in either direction (the last one written)."""
        given = self._given(term, count)
        if given is not None:
            return [given]
        key = (term.funct, *(self.bonded_type(t) for t in atom_types))
        for section in sections:
            found = self.scan.types.get(section, {}).get(key)
            if found is not None and len(found) >= count:
                return [found[:count]]
        raise self._missing(term, key[1:], sections[0])

    def _dihedral(self, term: _Interaction, atom_types: tuple[str, ...], count: int) -> list[tuple[float, ...]]:
        """Dihedral parameters: from the line, else the first `[ dihedraltypes ]` entry of the
        same kind with the most non-wildcard matches in either direction (all its rows for
        funct 9, the first for the others)."""
        given = self._given(term, count)
        if given is not None:
            return [given]
        bonded = tuple(self.bonded_type(t) for t in atom_types)
        kind = 1 if term.funct == 9 else term.funct
        if (kind, bonded) not in self._dihedral_cache:
            self._dihedral_cache[(kind, bonded)] = self._best_dihedral_type(kind, bonded)
        best = self._dihedral_cache[(kind, bonded)]
        if best is None:
            raise self._missing(term, bonded, "dihedraltypes")
        rows = best.rows if term.funct == 9 else best.rows[:1]
        if any(len(row) < count for row in rows):
            raise self._missing(term, bonded, "dihedraltypes")
        return [row[:count] for row in rows]

    def _best_dihedral_type(self, kind: int, bonded: tuple[str, ...]) -> _DihedralType | None:
        best, best_score = None, -1
        for entry in self.scan.dihedraltypes:
            if entry.funct == kind:
                score = max(_dihedral_match(entry.types, bonded), _dihedral_match(entry.types, bonded[::-1]))
                if score > best_score:
                    best, best_score = entry, score
                    if score == 4:
                        break
        return best

    def _pair(self, term: _Interaction, atom_types: tuple[str, ...]) -> tuple[float, float]:
        """c6, c12 of a 1-4 pair: from the line, else `[ pairtypes ]` (by atom type with
        gen-pairs, by bonded type without), else generated from the non-bonded c6, c12 times
        fudgeLJ (gen-pairs only)."""
        given = self._given(term, 2)
        if given is None:
            names = atom_types if self.scan.gen_pairs else tuple(self.bonded_type(t) for t in atom_types)
            given = self.scan.types.get("pairtypes", {}).get((1, *names))
            if given is None or len(given) < 2:
                if not self.scan.gen_pairs:
                    raise self._missing(term, names, "pairtypes")
                i, j = (self.type_of[t] for t in atom_types)
                return self.scan.fudge_lj * self.c6[i, j], self.scan.fudge_lj * self.c12[i, j]
        return _c6_c12(self.scan.comb_rule, *given[:2])

    def _missing(self, term: _Interaction, types: tuple[str, ...], section: str) -> InputError:
        return InputError(
            f"no parameters for function type {term.funct} between atom types {' '.join(types)} "
            f"(none on the line, no matching [ {section} ])",
            term.line.path,
            term.line.lineno,
            term.section,
        )


def _dihedral_match(pattern: tuple[str, ...], types: tuple[str, ...]) -> int:
    """How many atom types a dihedral type names exactly, -1 where it does not match."""
    if any(p != WILDCARD and p != t for p, t in zip(pattern, types)):
        return -1
    return sum(p != WILDCARD for p in pattern)


def _c6_c12(comb_rule: int, v: float, w: float) -> tuple[float, float]:
    """c6, c12 of a (V, W) parameter pair: given as such (comb-rule 1) or as sigma, epsilon."""
    return (v, w) if comb_rule == 1 else (4 * w * v**6, 4 * w * v**12)


# --------------------------------------------------------------------------- assembly


def _build(top: Path, scan: _Scan) -> Topology:
    type_names = tuple(scan.atomtypes)
    type_of = {t: i for i, t in enumerate(type_names)}
    c6, c12, sigma_t, eps_t = _lj_tables(scan, type_names)
    parameters = _Parameters(scan, c6, c12, type_of)
    used = {name for name, _ in scan.molecules}
    resolved = {name: parameters.resolve(m) for name, m in scan.molecule_types.items() if name in used}
    molecule_types = {name: _molecule_type(scan.molecule_types[name], r) for name, r in resolved.items()}

    molecules, first = [], 0
    for name, count in scan.molecules:
        for _ in range(count):
            molecules.append((name, first))
            first += molecule_types[name].n_atoms
    atoms = [atom for name, _ in molecules for atom in scan.molecule_types[name].atoms]
    if not atoms:
        raise InputError("the system has no atoms", top)
    atom_types = np.array([a.type for a in atoms])
    type_index = np.array([type_of[t] for t in atom_types], dtype=np.int64)
    starts = {name: np.array([s for n, s in molecules if n == name], dtype=np.int64) for name in resolved}

    def tiled(rows_of, n_atoms: int, columns: tuple[str, ...]) -> Terms:
        parts = [
            (np.asarray(rows_of(r), dtype=np.float64).reshape(-1, n_atoms + len(columns)), starts[n])
            for n, r in resolved.items()
        ]
        return _terms(parts, n_atoms, columns)

    bonded = {
        name: tiled(lambda r, name=name: r.bonded[name], form.atoms, form.columns) for name, form in FORMS.items()
    }
    return Topology(
        path=top,
        atom_names=np.array([a.name for a in atoms]),
        atom_types=atom_types,
        type_names=type_names,
        type_index=type_index,
        elements=np.array([_element(scan.atomtypes[a.type], a.mass) for a in atoms]),
        masses=np.array([a.mass for a in atoms], dtype=np.float64),
        charges=np.array([a.charge for a in atoms], dtype=np.float64),
        sigma=sigma_t[type_index],
        epsilon=eps_t[type_index],
        residue_numbers=np.array([a.residue_number for a in atoms], dtype=np.int64),
        residue_names=np.array([a.residue_name for a in atoms]),
        molecule_index=np.repeat(np.arange(len(molecules)), [molecule_types[n].n_atoms for n, _ in molecules]),
        molecule_types=molecule_types,
        molecules=tuple(molecules),
        c6=c6,
        c12=c12,
        bonded=bonded,
        pairs=tiled(lambda r: r.pairs, 2, ("c6", "c12")),
        constraints=tiled(lambda r: r.constraints, 2, ("b0",)),
        exclusions=np.unique(
            np.concatenate([molecule_types[n].exclusions + s for n, s in molecules]).reshape(-1, 2), axis=0
        ).astype(np.int64),
        fudge_qq=scan.fudge_qq,
        comb_rule=scan.comb_rule,
    )


def _terms(parts: list[tuple[np.ndarray, np.ndarray]], n_atoms: int, columns: tuple[str, ...]) -> Terms:
    """System-wide terms from each molecule type's local rows (atoms, then parameters) and the
    first atoms of its molecules."""
    indices, params = [np.zeros((0, n_atoms), np.int64)], [np.zeros((0, len(columns)))]
    for rows, starts in parts:
        local = rows[:, :n_atoms].astype(np.int64)
        indices.append((local[None] + starts[:, None, None]).reshape(-1, n_atoms))
        params.append(np.tile(rows[:, n_atoms:], (len(starts), 1)))
    return Terms(np.concatenate(indices), np.concatenate(params), columns)


def _molecule_type(m: _ScannedMolecule, resolved: _Resolved) -> MoleculeType:
    n = len(m.atoms)
    bonds = np.asarray(resolved.chemical_bonds, dtype=np.int64).reshape(-1, 2)
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
    names = tuple(a.name for a in m.atoms)
    return MoleculeType(m.name, m.nrexcl, names, tuple(a.type for a in m.atoms), bonds, exclusions)


def _lj_tables(scan: _Scan, type_names: tuple[str, ...]):
    v = np.array([scan.atomtypes[t].v for t in type_names])
    w = np.array([scan.atomtypes[t].w for t in type_names])
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
            c6[i, j], c12[i, j] = c6[j, i], c12[j, i] = _c6_c12(scan.comb_rule, pv, pw)
    return c6, c12, np.asarray(sigma, dtype=np.float64), np.asarray(eps, dtype=np.float64)


def _element(atomtype: _AtomType, mass: float) -> str:
    """The element of an atom: its type's atomic number, else the element nearest its mass."""
    from parmed.periodic_table import Element, element_by_mass

    if atomtype.atomic_number > 0:
        return Element[atomtype.atomic_number]
    return element_by_mass(mass) if mass > 0 else "X"


def bond_paths(bonds: np.ndarray, n_atoms: int, length: int) -> np.ndarray:
    """Every simple path of `length` atoms along `bonds` (n, 2), once: the orientation whose first
    atom index is the smaller one. Returns (P, length)."""
    directed = np.concatenate([bonds, bonds[:, ::-1]]).astype(np.int64)
    directed = directed[np.argsort(directed[:, 0], kind="stable")]
    starts = np.searchsorted(directed[:, 0], np.arange(n_atoms + 1))  # CSR adjacency
    paths = np.arange(n_atoms, dtype=np.int64)[:, None]
    for _ in range(length - 1):
        last = paths[:, -1]
        counts = starts[last + 1] - starts[last]
        rows = np.repeat(np.arange(len(paths)), counts)
        offsets = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        following = directed[starts[last][rows] + offsets, 1]
        paths = np.column_stack([paths[rows], following])
        paths = paths[~(paths[:, :-1] == following[:, None]).any(1)]
    return paths[paths[:, 0] < paths[:, -1]] if length > 1 else paths


def branch_classes(bonds: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every bond (n, 2) in both directions (D, 2) and, per direction a -> b, a class (D,): equal
    classes head topologically equivalent branches, the atoms reached from b without stepping
    straight back to a, compared as trees rooted at b with their atoms' `labels` (e.g. elements).

    Colour refinement on directed bonds: a direction's class is refined by the classes of the
    directions leaving b (but back to a) until the partition is stable, which compares the
    unfolded trees to any depth (the whole molecule, rings unrolled). Branches related by a
    symmetry of the graph always share a class (cumene's two methyls seen from their CH); a few
    regular graphs that no symmetry relates may share one too, as in Weisfeiler-Lehman tests.
    """
    directed = np.concatenate([bonds, bonds[:, ::-1]]).reshape(-1, 2).astype(np.int64)
    leaving: dict[int, list[int]] = {}
    for k, a in enumerate(directed[:, 0].tolist()):
        leaving.setdefault(a, []).append(k)
    onward = [[f for f in leaving[b] if directed[f, 1] != a] for a, b in directed.tolist()]
    classes = np.unique(np.asarray(labels)[directed[:, 1]], return_inverse=True)[1].reshape(-1)
    while True:
        keys = [(int(classes[k]), tuple(sorted(classes[onward[k]].tolist()))) for k in range(len(directed))]
        ids: dict[tuple, int] = {}
        refined = np.array([ids.setdefault(key, len(ids)) for key in keys], dtype=np.int64)
        if len(ids) == len(np.unique(classes)):
            return directed, refined
        classes = refined
