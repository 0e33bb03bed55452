"""The geometric baseline on held-out sPS frames: wall time per frame and quality against the reference.

    python benchmarks/bench_baseline.py [--out bench-out/] [--frames 0:80:8] [--engine gmxapi|cli]

Runs `gmx_deepbackmap.baseline.baseline` (placement, modifiers, 200 + 5,000 steps of steepest
descent) on the selected CG frames of t568/cg.xtc and t313/cg.xtc (the full 36-chain system; the
default 0, 8, ..., 72 avoids the t568 frames that are also training snapshots) and prints one
table: wall time per frame (placement with modifiers, both minimisation stages), clashes, ring
planarity, chirality flips and bond-length deviation of the baseline and of the reference AA frames
of the same indices, and the per-term GROMACS rerun energies (mean and sd over frames) of both.
Writes the baseline frames (`baseline-<T>.xtc`) and the table (`bench_baseline.md`) to --out.
Wall times are only comparable on an idle machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from gmx_deepbackmap.analysis import Analysis, ObservableConfig, set_energies
from gmx_deepbackmap.baseline import FrameTiming, baseline
from gmx_deepbackmap.bundled import bundled_path
from gmx_deepbackmap.gromacs import get_engine
from gmx_deepbackmap.report import markdown_table
from gmx_deepbackmap.structure import iter_frames, load_universe, parse_frames
from gmx_deepbackmap.topology import read_topology

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sps"
TEMPERATURES = ("t568", "t313")
TERMS = ("Bond", "Angle", "Proper Dih.", "Improper Dih.", "LJ (SR)", "Coulomb (SR)", "Potential")


def mean_sd(values) -> str:
    values = np.asarray(values, dtype=np.float64).ravel()
    return f"{values.mean():.4g} ± {values.std(ddof=1):.2g}" if len(values) > 1 else f"{values.mean():.4g}"


def checks(analysis: Analysis, structure: Path, trajectory: Path, frames: slice) -> dict[str, np.ndarray]:
    return analysis.run(iter_frames(load_universe(structure, trajectory), frames))


def column(values: dict, energies: dict, reference_chirality: np.ndarray, timings: list[FrameTiming] | None) -> dict:
    """One table column: the metrics of one set of frames."""
    flips = (values["chirality"] != reference_chirality).sum(1)
    col = {
        "frames": str(len(values["clashes"])),
        "clashes per frame (< 0.1 nm)": mean_sd(values["clashes"]),
        "ring planarity, max (nm)": f"{values['ring planarity'].max():.4f}",
        "chirality flips per frame": f"{flips.mean():.2f} of {values['chirality'].shape[1]}",
        "bond length RMS deviation (nm)": mean_sd(values["bond length RMS deviation"]),
    }
    if timings is not None:
        col["wall time per frame (s)"] = mean_sd([t.total for t in timings])
        col["  placement + modifiers (s)"] = mean_sd([t.placement for t in timings])
        col["  EM, 200 steps without non-bonded (s)"] = mean_sd([t.em_bonded for t in timings])
        col["  EM, 5,000 steps, everything on (s)"] = mean_sd([t.em_full for t in timings])
    for term in TERMS:
        if term in energies:
            col[f"{term} (kJ/mol)"] = mean_sd(energies[term])
    return col


def table(columns: dict[str, dict]) -> str:
    rows = list(dict.fromkeys(key for col in columns.values() for key in col))
    return markdown_table(["", *columns], [[row, *(col.get(row, "") for col in columns.values())] for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-out", help="folder for the baseline frames and the table")
    parser.add_argument("--frames", default="0:80:8", help="b:e:s of the CG/AA trajectories (default 0:80:8)")
    parser.add_argument("--engine", choices=("gmxapi", "cli"), help="GROMACS back end (default: as gmx-dbm)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frames = parse_frames(args.frames)
    top_path = bundled_path("sps/topol.top")
    topology = read_topology(top_path)
    analysis = Analysis.from_topology(topology, ObservableConfig())
    engine = get_engine(args.engine)
    columns = {}
    for name in TEMPERATURES:
        timings: list[FrameTiming] = []
        result = out / f"baseline-{name}.xtc"
        baseline(
            DATA / "cg.gro",
            top_path,
            result,
            trajectory=DATA / name / "cg.xtc",
            frames=frames,
            seed=args.seed,
            engine=args.engine,
            overwrite=True,
            timings=timings,
        )
        reference = checks(analysis, DATA / "aa.gro", DATA / name / "aa.xtc", frames)
        values = checks(analysis, DATA / "aa.gro", result, slice(None))
        ref_energies = set_energies(DATA / "aa.gro", DATA / name / "aa.xtc", topology, frames, engine=engine)
        energies = set_energies(DATA / "aa.gro", result, topology, engine=engine)
        temperature = name[1:] + " K"
        columns[f"{temperature} baseline"] = column(values, energies, reference["chirality"], timings)
        columns[f"{temperature} reference"] = column(reference, ref_energies, reference["chirality"], None)
        print(f"{name} done", flush=True)
    text = f"frames {args.frames}, seed {args.seed}, GROMACS engine {engine.name}\n\n{table(columns)}\n"
    (out / "bench_baseline.md").write_text(text)
    print(text + f"\nwritten to {out / 'bench_baseline.md'}")


if __name__ == "__main__":
    main()
