"""Harmonic angle energy per atom-type triple of backmapped frames, as % of the AA reference's.

    python angle_energy_by_type.py -p topologies/sps/topol.top -s ../shared/data/sps/aa.gro \
        REFERENCE.xtc NAME=BACKMAPPED.xtc [NAME=BACKMAPPED.xtc ...]

Frame means over each file's frames; bond vectors by minimum image, so molecules need not be whole.
"""

import argparse

import MDAnalysis as mda
import numpy as np
from MDAnalysis.lib.distances import minimize_vectors

from gmx_deepbackmap.topology import read_topology


def angle_energies(structure: str, trajectory: str, indices: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Mean energy (kJ/mol) of each angle term over the frames of `trajectory`."""
    universe = mda.Universe(structure, trajectory)
    frames = []
    for ts in universe.trajectory:
        x = universe.atoms.positions.astype(np.float64)
        v1 = minimize_vectors(x[indices[:, 0]] - x[indices[:, 1]], ts.dimensions)
        v2 = minimize_vectors(x[indices[:, 2]] - x[indices[:, 1]], ts.dimensions)
        cos = (v1 * v2).sum(1) / np.linalg.norm(v1, axis=1) / np.linalg.norm(v2, axis=1)
        theta = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
        frames.append(0.5 * params[:, 1] * np.radians(theta - params[:, 0]) ** 2)
    return np.mean(frames, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", required=True, help="topology (.top)")
    parser.add_argument("-s", required=True, help="structure with the topology's atoms (.gro)")
    parser.add_argument("reference")
    parser.add_argument("sets", nargs="+", metavar="NAME=XTC")
    args = parser.parse_args()
    topology = read_topology(args.p)
    indices, params = topology.angles.indices, topology.angles.params
    labels = np.array(["-".join(topology.atom_types[i]) for i in indices])
    reference = angle_energies(args.s, args.reference, indices, params)
    sets = dict(item.split("=", 1) for item in args.sets)
    energies = {name: angle_energies(args.s, path, indices, params) for name, path in sets.items()}
    print("| angle type | terms | reference (kJ/mol) | " + " | ".join(f"{n} (%)" for n in sets) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in sets) + " |")
    rows = [(label, labels == label) for label in np.unique(labels)] + [("all", np.ones(len(labels), bool))]
    for label, mask in sorted(rows[:-1], key=lambda row: -reference[row[1]].sum()) + rows[-1:]:
        ref = reference[mask].sum()
        shares = " | ".join(f"{100 * e[mask].sum() / ref:.0f}" for e in energies.values())
        print(f"| {label} | {mask.sum()} | {ref:.0f} | {shares} |")


if __name__ == "__main__":
    main()
