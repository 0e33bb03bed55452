"""Structures and trajectories (`.gro`, `.xtc`, ...) in GROMACS units, read and written safely.

MDAnalysis does the file formats; this module converts to nm and box matrices (rows are the
GROMACS box vectors, general triclinic), checks files against the topology, and writes outputs
atomically with GROMACS-style backups of files that already exist.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

ANGSTROM_PER_NM = 10.0


@dataclass(frozen=True)
class Frame:
    """One configuration: positions (N, 3) and box vectors as rows (3, 3), both nm."""

    positions: np.ndarray
    box: np.ndarray
    time: float = 0.0
    step: int = 0


def box_from_dimensions(dimensions) -> np.ndarray:
    """MDAnalysis `[a, b, c, alpha, beta, gamma]` (Angstrom, degrees) to box rows in nm."""
    from MDAnalysis.lib.mdamath import triclinic_vectors

    if dimensions is None:
        return np.zeros((3, 3))
    return np.asarray(triclinic_vectors(dimensions), dtype=np.float64) / ANGSTROM_PER_NM


def dimensions_from_box(box: np.ndarray) -> np.ndarray:
    """Box rows in nm to MDAnalysis `[a, b, c, alpha, beta, gamma]`."""
    from MDAnalysis.lib.mdamath import triclinic_box

    b = np.asarray(box, dtype=np.float64) * ANGSTROM_PER_NM
    return np.asarray(triclinic_box(b[0], b[1], b[2]), dtype=np.float64)


def load_universe(structure: str | os.PathLike, trajectory: str | os.PathLike | None = None):
    """An MDAnalysis Universe, with a one-line error naming the file that could not be read."""
    import MDAnalysis as mda

    for path in (structure, trajectory):
        if path is not None and not Path(path).is_file():
            raise InputError("file not found", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if trajectory is None:
                return mda.Universe(str(structure))
            return mda.Universe(str(structure), str(trajectory))
    except Exception as exc:  # MDAnalysis raises many types; all mean "unreadable"
        culprit = trajectory if trajectory is not None and "traj" in repr(exc).lower() else structure
        raise InputError(f"cannot read ({_first_line(exc)})", culprit) from None


def check_atom_count(universe, expected: int, path, what: str = "the topology") -> None:
    """Stop with a clear error when a structure has another number of atoms than expected."""
    n = len(universe.atoms)
    if n != expected:
        raise InputError(f"{n} atoms, but {what} describes {expected}", path)


def check_output_format(output: str | os.PathLike, n_frames: int) -> None:
    """Stop before any work when the output's format cannot hold `n_frames` frames."""
    from MDAnalysis.coordinates.core import get_writer_for

    try:
        get_writer_for(str(output), multiframe=n_frames > 1)
    except (TypeError, ValueError):
        what = f"{n_frames} frames" if n_frames > 1 else "a structure"
        raise InputError(
            f"cannot write {what} in this format (use .xtc or .trr for trajectories, .gro or .pdb for one frame)",
            output,
        ) from None


def parse_frames(spec: str | None) -> slice:
    """`b:e:s` (Python-style, any part optional) to a slice over frame indices."""
    if not spec:
        return slice(None)
    parts = spec.split(":")
    if len(parts) > 3:
        raise InputError(f"--frames '{spec}': expected b:e:s")
    try:
        values = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise InputError(f"--frames '{spec}': expected integers in b:e:s") from None
    return slice(*values)


def iter_frames(universe, frames: slice = slice(None)) -> Iterator[Frame]:
    """Frames of a universe's trajectory in nm, with their box matrices."""
    for ts in universe.trajectory[frames]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Reader has no dt information"
            time = float(ts.time)
        yield Frame(
            positions=universe.atoms.positions.astype(np.float64) / ANGSTROM_PER_NM,
            box=box_from_dimensions(ts.dimensions),
            time=time,
            step=int(ts.frame),
        )


def read_frames(structure, trajectory=None, frames: slice = slice(None), n_atoms: int | None = None):
    """All requested frames of a structure/trajectory pair as a list of `Frame`."""
    universe = load_universe(structure, trajectory)
    if n_atoms is not None:
        check_atom_count(universe, n_atoms, trajectory or structure)
    return list(iter_frames(universe, frames))


def backup_path(path: Path) -> Path:
    """GROMACS' backup name for an existing file: `#name.N#` with the first free N."""
    n = 1
    while (path.parent / f"#{path.name}.{n}#").exists():
        n += 1
    return path.parent / f"#{path.name}.{n}#"


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    An existing `path` is backed up GROMACS-style (`#path.1#`) unless `overwrite` is set; if
    the body raises, nothing is left behind.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    tmp_path.chmod(0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        if target.exists() and not overwrite:
            backup = backup_path(target)
            os.replace(target, backup)
            print(f"Back Off! I just backed up {target.name} to {backup.name}")
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_frames(
    path: str | os.PathLike,
    atom_names,
    residue_names,
    residue_numbers,
    frames: list[Frame],
    overwrite: bool = False,
) -> None:
    """Write frames (one for `.gro`/`.pdb`, any number for `.xtc`/`.trr`) atomically."""
    import MDAnalysis as mda

    target = Path(path)
    fmt = target.suffix.lstrip(".").upper()
    if not frames:
        raise InputError("no frames to write", target)
    universe = _empty_universe(atom_names, residue_names, residue_numbers)
    with atomic_output(target, overwrite) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mda.Writer(str(tmp), n_atoms=len(atom_names), format=fmt) as writer:
            for frame in frames:
                universe.atoms.positions = frame.positions * ANGSTROM_PER_NM
                universe.dimensions = dimensions_from_box(frame.box)
                universe.trajectory.ts.time = frame.time
                writer.write(universe.atoms)


def _empty_universe(atom_names, residue_names, residue_numbers):
    import MDAnalysis as mda

    resnums = np.asarray(residue_numbers)
    starts = np.flatnonzero(np.r_[True, resnums[1:] != resnums[:-1]])
    atom_resindex = np.cumsum(np.r_[True, resnums[1:] != resnums[:-1]]) - 1
    universe = mda.Universe.empty(len(atom_names), n_residues=len(starts), atom_resindex=atom_resindex, trajectory=True)
    universe.add_TopologyAttr("name", list(atom_names))
    universe.add_TopologyAttr("resname", [residue_names[i] for i in starts])
    universe.add_TopologyAttr("resid", [int(resnums[i]) for i in starts])
    return universe


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
