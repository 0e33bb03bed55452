"""The frame driver: one loop for every command that reads frames and writes frames.

`FrameSource` opens a structure (or a trajectory with it) and checks it once, before any work:
the file is readable, it holds the expected atoms in the expected order, the selection holds
frames, and every selected frame has finite coordinates and a box fit for the cut-offs. Its
iterator yields `Frame`s in nm. `run_frames` owns the loop that
`gmx-dbm backmap`, `baseline`, `map` and `energy` share (in the manner of MDAnalysis'
`AnalysisBase.run`): the output's format is checked first, then every frame is processed under a
progress bar and, for structure outputs, made whole and written atomically with a GROMACS-style
backup (the output's folder is checked to be writable first). A command supplies only what it
does to one frame.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from .errors import InputError
from .pbc import make_whole
from .structure import (
    Frame,
    check_atom_count,
    check_names,
    check_output_format,
    check_writable,
    iter_frames,
    load_universe,
    write_frames,
)

if TYPE_CHECKING:
    from .mapping import Mapping
    from .topology import Topology

Result = TypeVar("Result")


class FrameSource:
    """The selected frames of a structure, or of a trajectory with it, checked where they are read.

    Before any work: the file holds `n_atoms`, as `what` describes them ("... but {what} describes
    N"), named (atom, residue) as `names` says in that order (`structure.check_names`; with
    `allow_renamed` other names only warn), and every selected frame is sound (`structure.check_frame`:
    finite coordinates, a box with volume, and with `cutoff` (nm) at least twice its width).
    """

    def __init__(
        self,
        structure: str | os.PathLike,
        trajectory: str | os.PathLike | None,
        n_atoms: int,
        what: str,
        frames: slice = slice(None),
        *,
        names: tuple[Sequence[str], Sequence[str]] | None = None,
        cutoff: float | None = None,
        allow_renamed: bool = False,
    ):
        self.path = trajectory if trajectory is not None else structure
        self.universe = load_universe(structure, trajectory)
        check_atom_count(self.universe, n_atoms, self.path, what)
        if names is not None:
            check_names(self.universe, *names, structure, what, allow_renamed)
        self.frames, self.cutoff = frames, cutoff
        self.indices = range(len(self.universe.trajectory))[frames]
        if not self.indices:
            raise InputError(f"no frames selected ({frames.start}:{frames.stop}:{frames.step})", self.path)
        for _ in self:  # a bad frame stops the command before its first frame is processed
            pass

    @classmethod
    def of_topology(
        cls,
        topology: Topology,
        structure: str | os.PathLike,
        trajectory: str | os.PathLike | None,
        frames: slice = slice(None),
        **checks,
    ) -> FrameSource:
        """Atomistic frames of `topology`: its atom count and its atom and residue names."""
        names = (topology.atom_names, topology.residue_names)
        return cls(
            structure, trajectory, topology.n_atoms, f"the topology {topology.path}", frames, names=names, **checks
        )

    @classmethod
    def of_mapping(
        cls,
        mapping: Mapping,
        topology: Topology,
        structure: str | os.PathLike,
        trajectory: str | os.PathLike | None,
        frames: slice = slice(None),
        **checks,
    ) -> FrameSource:
        """CG frames of `mapping` (of `topology`'s molecules): its bead count and bead and residue names."""
        names = (mapping.bead_names, mapping.bead_residue_names)
        what = f"the CG mapping of the topology {topology.path}"
        return cls(structure, trajectory, mapping.n_beads, what, frames, names=names, **checks)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Frame]:
        return iter_frames(self.universe, self.frames, self.cutoff)


@dataclass(frozen=True)
class FrameOutput:
    """Where and how processed frames are written: atom names, residues, and (`levels`, see
    `pbc.unwrap_levels`) whether molecules are made whole first."""

    path: str | os.PathLike
    atom_names: np.ndarray
    residue_names: np.ndarray
    residue_numbers: np.ndarray
    levels: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    overwrite: bool = False

    def frame(self, positions: np.ndarray, like: Frame) -> Frame:
        """`positions` as the output frame of input frame `like` (its box, time and step kept)."""
        if self.levels is not None:
            positions = make_whole(torch.from_numpy(positions), torch.from_numpy(like.box), self.levels).numpy()
        return Frame(positions, like.box, like.time, like.step)


def run_frames(
    source: FrameSource,
    process: Callable[[Frame], Result],
    *,
    desc: str,
    output: FrameOutput | None = None,
    progress: bool = True,
    note: str | None = None,
) -> list[Result]:
    """`process` every frame of `source` in order under a progress bar; returns the results.

    With `output`, each result is an (N, 3) array of positions in nm, written there as one
    structure or trajectory (checked to be writable in that format before the first frame).
    `progress` False hides the bar; True shows it on terminals only (batch logs stay clean).
    `note`: one line for the user (stderr), once everything is checked and before the first frame.
    """
    from tqdm import tqdm

    if output is not None:
        check_writable(output.path)
        check_output_format(output.path, len(source))
    if note is not None:
        print(note, file=sys.stderr)
    results, written = [], []
    with tqdm(total=len(source), unit="frame", desc=desc, disable=None if progress else True) as bar:
        for frame in source:
            result = process(frame)
            results.append(result)
            if output is not None:
                written.append(output.frame(result, frame))
            bar.update(1)
    if output is not None:
        write_frames(
            output.path, output.atom_names, output.residue_names, output.residue_numbers, written, output.overwrite
        )
    return results


def frame_seed(seed: int, frame: int) -> int:
    """The seed of one frame: depends on the run's seed and the frame's index only, so a frame
    comes out the same whichever other frames are selected (and in chunked runs)."""
    return int(np.random.SeedSequence([seed, frame]).generate_state(1, np.uint64)[0] >> 1)
