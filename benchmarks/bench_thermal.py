"""The sampler's last stage, Metropolis sweeps with the force field at the frames' temperature, on
frames a bench_backmap.py run saved: issue #4's bar for them, without backmapping everything again.

    python benchmarks/bench_thermal.py --from bench-out [--out bench-thermal]
        [--thermal groups|hydrogens|planar-hydrogens] [--sweeps 60] [--frames b:e:s] [--model sps-568]
        [--sets t568 t313] [--threads 2]

For each set, reads `dbm-<T>.xtc`, `heldout-<T>-aa.xtc`, `heldout-<T>-cg.xtc` and
`speed-<T>-*.json` of the earlier run (made with `--thermal none`, or by a sampler without the
stage), runs `thermal.thermalise` on every frame (or the `--frames` slice of the saved frames) at
the set's temperature with the bead centres restrained to the CG frame (the call
`sampling.backmap_frame` ends with, seeded per frame) and scores the result and the frames as they
were against the reference with `gmx-dbm compare`, in bench_backmap.py's table. Only the random
stream and the 0.001 nm rounding of the .xtc the stage starts from differ from a run of
`gmx-dbm backmap` with the stage. The wall time per frame is the earlier run's plus the stage's,
timed here.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_backmap import DATA, MODEL, TEMPERATURES, bar_table, publish
from tqdm import tqdm

from gmx_deepbackmap.bundled import bundled_path
from gmx_deepbackmap.config import DEFAULTS
from gmx_deepbackmap.energies import ForceField
from gmx_deepbackmap.frames import frame_seed
from gmx_deepbackmap.mapping import read_mapping
from gmx_deepbackmap.model import load_model
from gmx_deepbackmap.report import compare
from gmx_deepbackmap.stereo import system_stereo
from gmx_deepbackmap.structure import Frame, iter_frames, load_universe, parse_frames, write_frames
from gmx_deepbackmap.thermal import SELECTIONS, thermal_moves, thermalise
from gmx_deepbackmap.topology import read_topology, system_residue_numbers

AS_GENERATED = "before the stage"


def thermalise_file(
    source: Path, cg: Path, result: Path, temperature: float, selection: str, sweeps: int, frames: slice, model: str
) -> float:
    """The `frames` of `source` after the stage at `temperature`, bead centres restrained to the
    CG frames of `cg` and the chiral centres of `model` kept, written to `result`; returns the
    stage's wall seconds per frame."""
    top = read_topology(bundled_path("sps/topol.top"))
    chiral = system_stereo(top, load_model(model).stereo)[:2]  # the centres the sampler keeps
    moves = thermal_moves(top, ForceField(top), selection, read_mapping(None, top), chiral)
    universe, cg_universe = load_universe(DATA / "aa.gro", source), load_universe(DATA / "cg.gro", cg)
    out, seconds = [], 0.0
    pairs = zip(iter_frames(universe, frames), iter_frames(cg_universe, frames))
    for frame, cg_frame in tqdm(
        pairs, total=len(range(len(universe.trajectory))[frames]), unit="frame", desc=source.name
    ):
        start = time.perf_counter()
        x = thermalise(
            frame.positions,
            frame.box,
            moves,
            temperature,
            sweeps,
            torch.Generator().manual_seed(frame_seed(0, frame.step)),
            cg=cg_frame.positions,
        )
        seconds += time.perf_counter() - start
        out.append(Frame(x, frame.box, frame.time, frame.step))
    write_frames(result, top.atom_names, top.residue_names, system_residue_numbers(top), out, overwrite=True)
    return seconds / len(out)


def frames_of(source: Path, result: Path, frames: slice) -> Path:
    """The atomistic trajectory `source` itself, or its `frames` written to `result` when a slice is given."""
    if frames == slice(None):
        return source
    top = read_topology(bundled_path("sps/topol.top"))
    write_frames(
        result,
        top.atom_names,
        top.residue_names,
        system_residue_numbers(top),
        list(iter_frames(load_universe(DATA / "aa.gro", source), frames)),
        overwrite=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", required=True, help="--out folder of a bench_backmap.py run")
    parser.add_argument("--out", default="bench-thermal", help="folder for frames, reports and the table")
    parser.add_argument("--thermal", choices=SELECTIONS, default=SELECTIONS[0], help="what the stage moves")
    parser.add_argument("--sweeps", type=int, default=DEFAULTS.thermal_sweeps)
    parser.add_argument("--model", default="sps-568", help="the model whose chiral centres the stage keeps")
    parser.add_argument("--frames", default=None, help="b:e:s of the saved frames (default all)")
    parser.add_argument("--sets", nargs="+", choices=TEMPERATURES, default=list(TEMPERATURES))
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    source, out = Path(args.source), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_atoms = len(load_universe(DATA / "aa.gro").atoms)
    frames = parse_frames(args.frames)
    text = [
        f"frames {args.frames or 'all'} of {source}, thermal {args.thermal}, {args.sweeps} sweeps, "
        f"{args.threads} threads"
    ]
    for name in args.sets:
        generated = frames_of(source / f"dbm-{name}.xtc", out / f"before-{name}.xtc", frames)
        reference = frames_of(source / f"heldout-{name}-aa.xtc", out / f"heldout-{name}-aa.xtc", frames)
        speed = json.loads(next(source.glob(f"speed-{name}-*.json")).read_text())
        result = out / f"dbm-{name}.xtc"
        stage = thermalise_file(
            source / f"dbm-{name}.xtc",
            source / f"heldout-{name}-cg.xtc",
            result,
            TEMPERATURES[name],
            args.thermal,
            args.sweeps,
            frames,
            args.model,
        )
        report = compare(
            DATA / "aa.gro",
            bundled_path("sps/topol.top"),
            reference,
            {MODEL: result, AS_GENERATED: generated},
            out / f"compare-{name}",
            overwrite=True,
        )
        n = len(load_universe(DATA / "aa.gro", reference).trajectory)
        before = speed["seconds"] / speed["frames"]
        table = bar_table(report, name, before + stage, n_atoms)
        text.append(
            f"## {name[1:]} K: {n} held-out frames\n\nWall time: {before:.1f} s per frame before the "
            f"stage (the earlier run), {stage:.1f} s for the stage.\n\n{table}"
        )
        publish(out, "bench_thermal", text, name, report)


if __name__ == "__main__":
    main()
