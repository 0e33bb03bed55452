"""Structures and trajectories (`.gro`, `.xtc`, ...) in GROMACS units, read and written safely.

MDAnalysis does the file formats; this module converts to nm and box matrices (rows are the
GROMACS box vectors, general triclinic), checks files against the topology, and writes outputs
atomically with GROMACS-style backups of files that already exist.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, read_text
from .pbc import ANGSTROM_PER_NM, box_from_dimensions, dimensions_from_box, minimum_width


@dataclass(frozen=True)
class Frame:
    """One configuration: positions (N, 3) and box vectors as rows (3, 3), both nm."""

    positions: np.ndarray
    box: np.ndarray
    time: float = 0.0
    step: int = 0


def load_universe(structure: str | os.PathLike, trajectory: str | os.PathLike | None = None):
    """An MDAnalysis Universe, with a one-line error naming the file that could not be read.

    A `.gro` is checked line by line first (`check_gro`); the structure is read before the
    trajectory, so an error names the file that caused it."""
    import MDAnalysis as mda

    for path in (structure, trajectory):
        if path is not None and not Path(path).is_file():
            raise InputError("file not found", path)
        if path is not None and Path(path).stat().st_size == 0:
            raise InputError("empty file", path)
    if Path(structure).suffix.lower() == ".gro":
        check_gro(structure)
    with _reader_errors(structure):
        universe = mda.Universe(str(structure))
    if trajectory is not None:
        with _reader_errors(trajectory):
            universe.load_new(str(trajectory))
    return universe


@contextlib.contextmanager
def _reader_errors(path: str | os.PathLike) -> Iterator[None]:
    """MDAnalysis' errors while reading `path` as one `InputError` naming it; its warnings, and the
    "Exception ignored" noise of a reader whose construction failed, are silenced."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda _: None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except InputError:
        raise
    except Exception as exc:  # MDAnalysis raises many types; all mean "unreadable"
        traceback.clear_frames(exc.__traceback__)  # the half-built reader goes now, silently
        gc.collect()
        raise InputError(f"cannot read ({_first_line(exc)})", path) from None
    finally:
        sys.unraisablehook = hook


def check_gro(path: str | os.PathLike) -> None:
    """Check a `.gro` file's layout line by line before MDAnalysis reads it: title, atom count,
    that many atom lines with a residue number and three finite coordinates in the columns the
    first atom line's precision sets, and a box line of 3 or 9 finite numbers. The first problem
    is an `InputError` naming its line."""
    lines = read_text(path).splitlines()
    if len(lines) < 2:
        raise InputError("no atom count (a .gro has a title line, then the number of atoms)", path, len(lines) + 1)
    try:
        n_atoms = int(lines[1])
    except ValueError:
        raise InputError(f"'{lines[1].strip()}': expected the number of atoms", path, 2) from None
    if n_atoms < 1:
        raise InputError(f"{n_atoms} atoms: expected at least 1", path, 2)
    width = lines[2][25:].find(".") + 1 if len(lines) > 2 else 0  # MDAnalysis' rule: the coordinates' width
    for lineno, line in enumerate(lines[2 : n_atoms + 2], start=3):
        _check_atom_line(line, width, path, lineno)
    if len(lines) < n_atoms + 3:
        found = max(len(lines) - 2, 0)
        ends = f"the file ends after {found} of {n_atoms} atom lines"
        raise InputError("no box line after the atoms" if found == n_atoms else ends, path, len(lines) + 1)
    box = _numbers(lines[n_atoms + 2].split(), path, n_atoms + 3, "box")
    if len(box) not in (3, 9):
        raise InputError(f"box line with {len(box)} numbers (expected 3 or 9)", path, n_atoms + 3)


def _check_atom_line(line: str, width: int, path, lineno: int) -> None:
    """One `.gro` atom line: residue number in columns 1-5, then x, y, z of `width` columns from column 21."""
    if width < 2 or len(line) < 20 + 3 * width:
        raise InputError("atom line too short (expected residue, names, number and x y z)", path, lineno)
    try:
        int(line[:5])
    except ValueError:
        raise InputError(f"residue number '{line[:5].strip()}' is not an integer", path, lineno) from None
    _numbers([line[20 + width * i : 20 + width * (i + 1)] for i in range(3)], path, lineno, "coordinate")


def _numbers(words: Sequence[str], path, lineno: int, what: str) -> list[float]:
    """Words as finite floats; the first that is not one is an `InputError` at `lineno`."""
    values = []
    for word in words:
        try:
            value = float(word)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value):
            raise InputError(f"{what} '{word.strip()}' is not a finite number", path, lineno)
        values.append(value)
    return values


def check_atom_count(universe, expected: int, path, what: str = "the topology") -> None:
    """Stop with a clear error when a structure has another number of atoms than expected."""
    n = len(universe.atoms)
    if n != expected:
        raise InputError(f"{n} atoms, but {what} describes {expected}", path)


# nm: coordinates and box entries beyond this are corrupt (the .gro format ends at 9999.999; float32
# positions keep 0.001 nm only up to about this far); they would wrap into silently wrong places.
MAX_COORDINATE = 1e4
NAME_WIDTHS = {".gro": 5, ".pdb": 4}  # columns a format keeps of atom and residue names


def check_names(
    universe,
    atom_names: Sequence[str],
    residue_names: Sequence[str],
    path: str | os.PathLike,
    what: str = "the topology",
    allow_renamed: bool = False,
) -> None:
    """Stop when the structure's atom or residue names differ from those `what` expects in its
    order (swapped lines, renamed atoms, another molecule): the first mismatch is named with its
    line (for `.gro`). With `allow_renamed`, as grompp with -maxwarn, it is only a warning."""
    if not (hasattr(universe.atoms, "names") and hasattr(universe.atoms, "resnames")):
        return  # formats without names (e.g. a bare .xtc) cannot be checked
    width = NAME_WIDTHS.get(Path(path).suffix.lower())
    found = np.char.add(np.char.add(universe.atoms.resnames.astype(str), " "), universe.atoms.names.astype(str))
    expected = np.array([f"{r[:width]} {a[:width]}" for r, a in zip(residue_names, atom_names)])
    differ = np.flatnonzero(found != expected)
    if not len(differ):
        return
    i = int(differ[0])
    is_gro = Path(path).suffix.lower() == ".gro"
    error = InputError(
        f"{'' if is_gro else f'atom {i + 1}: '}residue and atom name '{found[i]}', but {what} has '{expected[i]}' here "
        f"({len(differ)} of {len(found)} atoms differ: lines out of order, or renamed; --allow-renamed "
        "accepts other names in the same order)",
        path,
        i + 3 if is_gro else None,
    )
    if not allow_renamed:
        raise error
    print(f"Warning: {error}", file=sys.stderr)


def check_frame(frame: Frame, path: str | os.PathLike, cutoff: float | None = None) -> None:
    """Stop before any work on a frame that would corrupt it: a coordinate or box entry that is not
    finite, a box without volume, or (given a `cutoff` in nm) a box narrower than twice the cutoff,
    in which the pair searches would see an atom's own images."""
    where = f"frame {frame.step}: "
    bad = np.flatnonzero(~(np.abs(frame.positions) <= MAX_COORDINATE).all(axis=1))  # NaN fails too
    if len(bad):
        x = frame.positions[bad[0]]
        raise InputError(
            f"{where}atom {bad[0] + 1} at ({x[0]:g} {x[1]:g} {x[2]:g}) nm: expected finite coordinates within "
            f"{MAX_COORDINATE:g} nm of the origin",
            path,
        )
    if not (np.abs(frame.box) <= MAX_COORDINATE).all() or not abs(np.linalg.det(frame.box)) > 0:
        raise InputError(
            f"{where}the box has no volume or is not finite (box vectors {frame.box.round(5).tolist()} nm)", path
        )
    if cutoff is not None:
        width = minimum_width(frame.box)
        if width < 2 * cutoff:
            raise InputError(
                f"{where}the box is {width:.3f} nm wide, less than twice the cut-off of {cutoff:g} nm "
                f"(at least {2 * cutoff:g} nm needed)",
                path,
            )


def check_writable(output: str | os.PathLike) -> None:
    """Stop before any work when `output` cannot be written: it is a folder, or the nearest
    existing folder above it does not accept new files (checked by creating one)."""
    target = Path(output)
    if target.is_dir():
        raise InputError("is a folder, expected a file name", target)
    folder = target.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"cannot write: {folder} is not a folder", target)
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise InputError(f"cannot write in {folder} ({exc.strerror})", target) from None


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
    """`b:e:s` (Python-style, any part optional; s not 0) to a slice over frame indices."""
    if not spec:
        return slice(None)
    parts = spec.split(":")
    if len(parts) > 3:
        raise InputError(f"--frames '{spec}': expected b:e:s")
    try:
        values = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise InputError(f"--frames '{spec}': expected integers in b:e:s") from None
    if len(values) == 3 and values[2] == 0:
        raise InputError(f"--frames '{spec}': the step s must not be 0")
    return slice(*values)


def iter_frames(universe, frames: slice = slice(None), cutoff: float | None = None) -> Iterator[Frame]:
    """Frames of a universe's trajectory in nm, with their box matrices, each checked by
    `check_frame` (with `cutoff`, nm) as it is read; a frame that cannot be read is an
    `InputError` naming the file."""
    path = universe.trajectory.filename
    selected = iter(universe.trajectory[frames])
    while True:
        with _reader_errors(path):  # not held across the yield: the caller's warnings are its own
            ts = next(selected, None)
            if ts is None:
                return
            frame = Frame(
                positions=universe.atoms.positions.astype(np.float64) / ANGSTROM_PER_NM,
                box=box_from_dimensions(ts.dimensions),
                time=float(ts.time),
                step=int(ts.frame),
            )
        check_frame(frame, path, cutoff)
        yield frame


def read_frames(
    structure, trajectory=None, frames: slice = slice(None), n_atoms: int | None = None, cutoff: float | None = None
):
    """All requested frames of a structure/trajectory pair as a list of checked `Frame`s."""
    universe = load_universe(structure, trajectory)
    if n_atoms is not None:
        check_atom_count(universe, n_atoms, trajectory or structure)
    return list(iter_frames(universe, frames, cutoff))


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
