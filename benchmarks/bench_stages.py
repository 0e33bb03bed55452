"""Where the sampler's strain comes from: energies of held-out sPS frames after each sampling stage.

    python benchmarks/bench_stages.py [--model sps-568] [--frames 0:16:8] [--threads 2]
        [--orientations K] [--gibbs-sweeps N] [--repair-rounds R] [--seed 0] [--json stages.json]

Backmaps the selected frames of t568 (without the training snapshots) and t313 as `gmx-dbm backmap`
does, and after the forward pass, each Gibbs sweep, each repair round and the final restoration of
bond lengths reports per frame (mean over frames): the angle energy split into angles within one
bead and angles across two beads (junctions), heavy-atom angles and angles with a hydrogen, the
whole-frame proper, improper and LJ energies (reference settings: 1.0 nm cut-offs), the bond-length
RMS deviation from b0, and the non-excluded pairs closer than 0.2 nm. The reference frames' row
comes first. About a minute per frame on 2 cores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from bench_backmap import DATA, add_sampler_arguments, held_out, sampler_config  # the script's folder is on sys.path

from gmx_deepbackmap.analysis import BondDeviation, Clashes, frame_context
from gmx_deepbackmap.bundled import bundled_path
from gmx_deepbackmap.energies import ForceField
from gmx_deepbackmap.forms import form_energies
from gmx_deepbackmap.frames import frame_seed
from gmx_deepbackmap.mapping import read_mapping
from gmx_deepbackmap.model import load_model
from gmx_deepbackmap.report import markdown_table
from gmx_deepbackmap.sampling import backmap_frame, prepare_system
from gmx_deepbackmap.structure import load_universe, parse_frames
from gmx_deepbackmap.topology import Topology, read_topology

CLOSE = 0.2  # nm: non-excluded pairs closer than this are counted (the sPS reference has about 20 per frame)
HEAVY_MASS = 2.0  # amu: lighter atoms are hydrogens


class StageMetrics:
    """Energies and geometry of one system's frames, with the angle energy split by where angles lie."""

    def __init__(self, topology: Topology, owner: np.ndarray):
        self.force_field = ForceField(topology)
        self.excluded = np.sort(topology.exclusions[:, 0] * topology.n_atoms + topology.exclusions[:, 1])
        self.bonds = BondDeviation(topology.bonds.indices, topology.bonds.params[:, 0])
        self.close = Clashes(CLOSE)
        self.angles = topology.angles.indices
        a = self.angles
        within = (owner[a[:, 0]] == owner[a[:, 1]]) & (owner[a[:, 1]] == owner[a[:, 2]])
        heavy = (topology.masses[a] > HEAVY_MASS).all(1)
        self.classes = {
            "angle within beads, heavy": within & heavy,
            "angle within beads, with H": within & ~heavy,
            "angle across beads, heavy": ~within & heavy,
            "angle across beads, with H": ~within & ~heavy,
        }

    def __call__(self, positions: np.ndarray, box: np.ndarray) -> dict[str, float]:
        ctx = frame_context(positions, box, self.excluded, CLOSE)
        a = self.angles
        vectors = [ctx.vectors(a[:, 0], a[:, 1]), ctx.vectors(a[:, 1], a[:, 2])]
        energy = form_energies("angle", vectors, self.force_field.terms["angle"][1]).numpy()
        terms = self.force_field.energies(positions, box)
        return {
            "angle": float(energy.sum()),
            **{name: float(energy[m].sum()) for name, m in self.classes.items()},
            "proper": float(terms["proper"]),
            "improper": float(terms["improper"]),
            "LJ": float(terms["lj"]),
            "bond RMS (nm)": float(self.bonds.single_frame(ctx)[0]),
            f"pairs < {CLOSE} nm": float(self.close.single_frame(ctx)[0]),
        }


def sample_stages(model, system, metrics: StageMetrics, frame, config) -> dict[str, dict[str, float]]:
    """`metrics` of one CG frame's structure after each stage of the pipeline `config` builds, by
    stage name (seeded as `gmx-dbm backmap` seeds the frame)."""
    out = {}
    backmap_frame(
        model,
        system,
        frame.positions,
        frame.box,
        config,
        seed=frame_seed(config.seed, frame.step),
        trace=lambda stage, positions: out.__setitem__(stage, metrics(positions, frame.box)),
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sps-568", help="bundled model name or model file")
    parser.add_argument("--frames", default="0:16:8", help="b:e:s of the 78 CG/AA frames (default 0:16:8)")
    parser.add_argument("--threads", type=int, default=2)
    add_sampler_arguments(parser)
    parser.add_argument("--json", type=Path, help="write the per-stage means here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    topology = read_topology(bundled_path("sps/topol.top"))
    config = sampler_config(args)
    system = prepare_system(model, topology, read_mapping(None, topology), config.constrain, config.thermal)
    metrics = StageMetrics(topology, system.plan.atom_owner)
    results = {}
    for name in ("t568", "t313"):
        aa = load_universe(DATA / "aa.gro", DATA / name / "aa.xtc")
        cg = load_universe(DATA / "cg.gro", DATA / name / "cg.xtc")
        frames = parse_frames(args.frames)
        stages: dict[str, list[dict[str, float]]] = {}
        for ref, frame in zip(held_out(aa, name, frames), held_out(cg, name, frames)):
            stages.setdefault("reference", []).append(metrics(ref.positions, ref.box))
            for stage, values in sample_stages(model, system, metrics, frame, config).items():
                stages.setdefault(stage, []).append(values)
        means = {
            stage: {k: float(np.mean([row[k] for row in rows])) for k in rows[0]} for stage, rows in stages.items()
        }
        results[name] = means
        columns = list(means["reference"])
        rows = [
            [stage] + [f"{v:.4f}" if "nm)" in k else f"{v:.0f}" for k, v in values.items()]
            for stage, values in means.items()
        ]
        n = len(stages["reference"])
        print(f"## {name[1:]} K: {args.model}, {n} held-out frames, energies in kJ/mol per frame\n")
        print(markdown_table(["stage", *columns], rows) + "\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
