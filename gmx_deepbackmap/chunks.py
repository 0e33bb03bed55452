"""Long trajectories in chunks: resumable backmapping and the merge of its chunks.

`backmap_in_chunks` writes every chunk of frames atomically into a work folder whose
`manifest.json` records the run's identity (the sha256 of every input file: structure,
trajectory, topology with all its includes, mappings, model; frame range, sampler settings); a
chunk file exists only once it is complete, so a rerun skips finished chunks, separate processes
(e.g. the tasks of a SLURM array job, `only`) can each write their own chunk, and a folder of
another run, or of inputs changed since (even in place), is refused. Each frame's seed depends only on
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
from .structure import atomic_output, load_universe, write_frames
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
    allow_renamed: bool = False,
    mdp: str | os.PathLike | None = None,
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
        "sha256": input_hashes(structure, trajectory, topology, mapping, model, mdp),
        "frames": [indices.start, indices.stop, indices.step],
        "chunk_size": chunk_size,
        "sampler": config.as_dict(),
    }
    manifest = _read_manifest(work)
    if manifest is None:
        _write_manifest(work, {"run": run})
    else:
        _check_same_run(manifest["run"], run, work)
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
            allow_renamed=allow_renamed,
            mdp=mdp,
        )
        done += len(chunk)
    return done


def merge_chunks(workdir: str | os.PathLike, output: str | os.PathLike, overwrite: bool = False) -> int:
    """Join the chunks of `workdir` in frame order into `output`; every chunk must be there."""
    from .structure import check_writable, read_frames

    check_writable(output)
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
    top = read_topology(manifest["run"]["topology"])
    frames = [frame for name in chunks for frame in read_frames(work / name, n_atoms=top.n_atoms)]
    write_frames(output, top.atom_names, top.residue_names, system_residue_numbers(top), frames, overwrite)
    return len(frames)


def input_hashes(structure, trajectory, topology, mapping, model, mdp=None) -> dict[str, str]:
    """The sha256 of every file a backmapping reads, by path: the structure, the trajectory, the
    topology and every file it includes, the mapping files (given, else the bundled ones the
    topology's molecule types take), the model and the `.mdp`."""
    from .mapping import read_mapping
    from .preprocess import source_files

    mappings = read_mapping(mapping, read_topology(topology)).molecule_types.values()
    files = [structure, trajectory, *source_files(topology), *(m.path for m in mappings), resolve_model(model), mdp]
    return {str(Path(f).resolve()): _sha256(Path(f)) for f in files if f is not None}


def _check_same_run(recorded: dict, run: dict, work: Path) -> None:
    """Refuse a folder whose chunks came from other inputs (named, if a file changed) or settings."""
    if recorded == run:
        return
    old, new = recorded.get("sha256", {}), run["sha256"]
    changed = [path for path in new if path in old and old[path] != new[path]]
    if changed:
        raise InputError(
            f"{changed[0]} changed since the chunks in this folder were made (another sha256); "
            "use a new --workdir, or delete this one to start over",
            work,
        )
    raise InputError(
        "this folder holds chunks of another run (different inputs, model, frames or sampler settings); "
        "use a new --workdir",
        work,
    )


def _chunks(run: dict):
    indices = range(*run["frames"])
    size = run["chunk_size"]
    for k in range(0, len(indices), size):
        yield f"chunk{k // size:05d}.xtc", indices[k : k + size]


def _read_manifest(work: Path) -> dict | None:
    """The manifest of a chunk folder (None if it has none); an unreadable one is an `InputError`."""
    path = work / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        run = manifest["run"]
        range(*run["frames"])  # the fields _chunks and merge_chunks use, of the right kinds
        if not (isinstance(run["chunk_size"], int) and run["chunk_size"] > 0 and isinstance(run["topology"], str)):
            raise ValueError("chunk_size or topology malformed")
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
        raise InputError(f"not a manifest of gmx-dbm backmap --workdir ({type(exc).__name__}: {exc})", path) from None
    return manifest


def _write_manifest(work: Path, manifest: dict) -> None:
    with atomic_output(work / MANIFEST, overwrite=True) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
