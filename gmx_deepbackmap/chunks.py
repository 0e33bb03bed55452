"""Long trajectories in chunks: resumable backmapping and the merge of its chunks.

`backmap_in_chunks` writes every chunk of frames atomically into a work folder whose
`manifest.json` records the run's identity (inputs, model hash, frame range, sampler settings); a
chunk file exists only once it is complete, so a rerun skips finished chunks, separate processes
(e.g. the tasks of a SLURM array job, `only`) can each write their own chunk, and a folder of
another run is refused. Each frame's seed depends only on
the run's seed and the frame's index, so the merged trajectory equals an unchunked run's.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .config import DEFAULTS, SamplerConfig
from .errors import InputError
from .model import resolve_model
from .sampling import backmap
from .structure import Frame, atomic_output, load_universe, write_frames
from .topology import read_topology, system_residue_numbers

MANIFEST = "manifest.json"


def backmap_in_chunks(
    structure: str | os.PathLike,
    topology: str | os.PathLike,
    workdir: str | os.PathLike,
    config: SamplerConfig = DEFAULTS,
    *,
    chunk_size: int,
    trajectory: str | os.PathLike | None = None,
    mapping: str | os.PathLike | list | tuple | None = None,
    model: str | os.PathLike = "sps-568",
    frames: slice = slice(None),
    only: int | None = None,
    progress: bool = True,
) -> int:
    """Backmap the selected frames chunk by chunk into `workdir` with `sampling.backmap` (with
    `only`, just chunk number `only`); returns the number of frames done."""
    if chunk_size < 1:
        raise InputError(f"--chunk-size {chunk_size}: expected at least 1")
    indices = range(len(load_universe(structure, trajectory).trajectory))[frames]
    if not indices:
        raise InputError("no frames selected", trajectory or structure)
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    run = {
        "structure": str(Path(structure).resolve()),
        "trajectory": None if trajectory is None else str(Path(trajectory).resolve()),
        "topology": str(Path(topology).resolve()),
        "mapping": _plain(mapping),
        "model_sha256": _sha256(resolve_model(model)),
        "frames": [indices.start, indices.stop, indices.step],
        "chunk_size": chunk_size,
        "sampler": config.as_dict(),
    }
    manifest = _read_manifest(work)
    if manifest is None:
        _write_manifest(work, {"run": run})
    elif manifest["run"] != run:
        raise InputError(
            "this folder holds chunks of another run (different inputs, model, frames or sampler settings); "
            "use a new --workdir",
            work,
        )
    chunks = list(_chunks(run))
    if only is not None and not 0 <= only < len(chunks):
        raise InputError(f"--chunk {only}: this run has chunks 0 to {len(chunks) - 1}")
    done = 0
    for k, (name, chunk) in enumerate(chunks):
        if (only is not None and k != only) or (work / name).is_file():
            continue
        backmap(
            structure,
            topology,
            work / name,
            config,
            trajectory=trajectory,
            mapping=mapping,
            model=model,
            frames=slice(chunk.start, chunk.stop, chunk.step),
            overwrite=True,
            progress=progress,
        )
        done += len(chunk)
    return done


def merge_chunks(workdir: str | os.PathLike, output: str | os.PathLike, overwrite: bool = False) -> int:
    """Join the chunks of `workdir` in frame order into `output`; every chunk must be there."""
    from MDAnalysis.coordinates.XTC import XTCReader

    from .structure import box_from_dimensions

    work = Path(workdir)
    manifest = _read_manifest(work)
    if manifest is None:
        raise InputError(f"no {MANIFEST}: not a chunked backmapping folder", work)
    chunks = [name for name, _ in _chunks(manifest["run"])]
    missing = [n for n in chunks if not (work / n).is_file()]
    if missing:
        raise InputError(
            f"{len(missing)} of {len(chunks)} chunks missing ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}); rerun the chunked backmap first",
            work,
        )
    frames = [
        Frame(ts.positions / 10.0, box_from_dimensions(ts.dimensions), float(ts.time), int(ts.frame))
        for name in chunks
        for ts in XTCReader(str(work / name))
    ]
    top = read_topology(manifest["run"]["topology"])
    write_frames(output, top.atom_names, top.residue_names, system_residue_numbers(top), frames, overwrite)
    return len(frames)


def _chunks(run: dict):
    indices = range(*run["frames"])
    size = run["chunk_size"]
    for k in range(0, len(indices), size):
        yield f"chunk{k // size:05d}.xtc", indices[k : k + size]


def _read_manifest(work: Path) -> dict | None:
    path = work / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def _write_manifest(work: Path, manifest: dict) -> None:
    with atomic_output(work / MANIFEST, overwrite=True) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(Path(value).resolve()) if isinstance(value, os.PathLike) else value
