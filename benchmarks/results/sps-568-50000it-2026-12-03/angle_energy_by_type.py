"""Harmonic angle energy per atom-type triple of backmapped frames, as % of the AA reference's.

    python angle_energy_by_type.py -p topologies/sps/topol.top -s ../shared/data/sps/aa.gro \
        REFERENCE.xtc NAME=BACKMAPPED.xtc [NAME=BACKMAPPED.xtc ...]

Frame means over each file's frames, with the package's own angle energy (molecules made whole
first, so the files may hold them broken across the box).
"""

import argparse

import numpy as np
import torch

from gmx_deepbackmap.energies import bonded_row_energies
from gmx_deepbackmap.sampler import make_whole, unwrap_levels
from gmx_deepbackmap.structure import read_frames
from gmx_deepbackmap.topology import Topology, read_topology


def angle_energies(structure: str, trajectory: str, topology: Topology) -> np.ndarray:
    """Mean energy (kJ/mol) of each angle term of `topology` over the frames of `trajectory`."""
    levels = unwrap_levels(topology)
    idx = torch.from_numpy(topology.angles.indices)[None]
    params = torch.from_numpy(topology.angles.params)[None]
    frames = []
    for frame in read_frames(structure, trajectory, n_atoms=topology.n_atoms):
        x = make_whole(torch.from_numpy(frame.positions), torch.from_numpy(frame.box), levels)
        frames.append(bonded_row_energies("angle", x[None], idx, params)[0].numpy())
    return np.mean(frames, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", required=True, help="topology (.top)")
    parser.add_argument("-s", required=True, help="structure with the topology's atoms (.gro)")
    parser.add_argument("reference")
    parser.add_argument("sets", nargs="+", metavar="NAME=XTC")
    args = parser.parse_args()
    topology = read_topology(args.p)
    labels = np.array(["-".join(topology.atom_types[i]) for i in topology.angles.indices])
    reference = angle_energies(args.s, args.reference, topology)
    sets = dict(item.split("=", 1) for item in args.sets)
    energies = {name: angle_energies(args.s, path, topology) for name, path in sets.items()}
    print("| angle type | terms | reference (kJ/mol) | " + " | ".join(f"{n} (%)" for n in sets) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in sets) + " |")
    by_type = sorted(np.unique(labels), key=lambda label: -reference[labels == label].sum())
    for label, mask in [(label, labels == label) for label in by_type] + [("all", np.ones(len(labels), bool))]:
        ref = reference[mask].sum()
        shares = " | ".join(f"{100 * e[mask].sum() / ref:.0f}" for e in energies.values())
        print(f"| {label} | {mask.sum()} | {ref:.0f} | {shares} |")


if __name__ == "__main__":
    main()
