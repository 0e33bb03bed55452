"""The sampler's last stage, the hydrogens drawn from the force field, on frames a bench_backmap.py
run saved: issue #4's bar for them, without backmapping everything again.

    python benchmarks/bench_thermal_hydrogens.py --from bench-out [--out bench-thermal]
        [--thermal-hydrogens planar|all] [--sets t568 t313] [--threads 2]

For each set, reads `dbm-<T>.xtc`, `heldout-<T>-aa.xtc` and `speed-<T>-*.json` of the earlier run
(made with `--thermal-hydrogens none`, or by a sampler without the stage), draws the chosen
hydrogens of every frame at the set's temperature with `thermal.thermalise_hydrogens` (the call
`sampler.backmap_frame` ends with; seeded per frame, every other atom held) and scores the result
and the frames as they were against the reference with `gmx-dbm compare`, in bench_backmap.py's
table. Only the random stream and the 0.001 nm rounding of the .xtc the stage starts from differ
from a run of `gmx-dbm backmap` with the stage; the carbon observables (angle, dihedral, ring
torsion, C-C pairs), bonds, clashes and chirality do not change. The wall time per frame is the
earlier run's plus the stage's, timed here.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_backmap import DATA, MODEL, TEMPERATURES, bar_table, publish
from tqdm import tqdm

from gmx_deepbackmap.analysis import compare
from gmx_deepbackmap.bundled import bundled_path
from gmx_deepbackmap.energies import ForceField
from gmx_deepbackmap.sampler import frame_seed
from gmx_deepbackmap.structure import Frame, iter_frames, load_universe, write_frames
from gmx_deepbackmap.thermal import hydrogen_moves, thermalise_hydrogens
from gmx_deepbackmap.topology import read_topology, system_residue_numbers

AS_GENERATED = "hydrogens as generated"


def thermalise_file(source: Path, result: Path, temperature: float, planar_only: bool) -> float:
    """Every frame of `source` with its hydrogens drawn at `temperature`, written to `result`;
    returns the stage's wall seconds per frame."""
    top = read_topology(bundled_path("sps/topol.top"))
    moves = hydrogen_moves(top, ForceField(top), planar_only=planar_only)
    universe = load_universe(DATA / "aa.gro", source)
    frames, seconds = [], 0.0
    for frame in tqdm(iter_frames(universe, slice(None)), total=len(universe.trajectory), unit="frame",
                      desc=source.name):
        start = time.perf_counter()
        x = thermalise_hydrogens(frame.positions, frame.box, moves, temperature,
                                 generator=torch.Generator().manual_seed(frame_seed(0, frame.step)))
        seconds += time.perf_counter() - start
        frames.append(Frame(x, frame.box, frame.time, frame.step))
    write_frames(result, top.atom_names, top.residue_names, system_residue_numbers(top), frames, overwrite=True)
    return seconds / len(frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", required=True, help="--out folder of a bench_backmap.py run")
    parser.add_argument("--out", default="bench-thermal", help="folder for frames, reports and the table")
    parser.add_argument("--thermal-hydrogens", choices=("planar", "all"), default="planar")
    parser.add_argument("--sets", nargs="+", choices=TEMPERATURES, default=list(TEMPERATURES))
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    source, out = Path(args.source), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_atoms = len(load_universe(DATA / "aa.gro").atoms)
    text = [f"frames of {source}, thermal hydrogens {args.thermal_hydrogens}, {args.threads} threads"]
    for name in args.sets:
        generated, reference = source / f"dbm-{name}.xtc", source / f"heldout-{name}-aa.xtc"
        speed = json.loads(next(source.glob(f"speed-{name}-*.json")).read_text())
        result = out / f"dbm-{name}.xtc"
        stage = thermalise_file(generated, result, TEMPERATURES[name], args.thermal_hydrogens == "planar")
        report = compare(DATA / "aa.gro", bundled_path("sps/topol.top"), reference,
                         {MODEL: result, AS_GENERATED: generated}, out / f"compare-{name}", overwrite=True)
        n = len(load_universe(DATA / "aa.gro", reference).trajectory)
        before = speed["seconds"] / speed["frames"]
        table = bar_table(report, name, before + stage, n_atoms)
        text.append(f"## {name[1:]} K: {n} held-out frames\n\nWall time: {before:.1f} s per frame before the "
                    f"stage (the earlier run), {stage:.1f} s for the stage.\n\n{table}")
        publish(out, "bench_thermal_hydrogens", text, name, report)


if __name__ == "__main__":
    main()
