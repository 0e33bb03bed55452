"""Angle terms above 40 kJ/mol (the sampler's STRAINED_TERM) per frame, and the largest one.

python strained_angles.py -p topologies/sps/topol.top -s ../shared/data/sps/aa.gro FRAMES.xtc [...]
"""

import argparse

import numpy as np
import torch

from gmx_deepbackmap.energies import vector_energies
from gmx_deepbackmap.pbc import minimum_image
from gmx_deepbackmap.sampler import STRAINED_TERM
from gmx_deepbackmap.structure import read_frames
from gmx_deepbackmap.topology import read_topology


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", required=True, help="topology (.top)")
    parser.add_argument("-s", required=True, help="structure with the topology's atoms (.gro)")
    parser.add_argument("trajectories", nargs="+")
    args = parser.parse_args()
    angles = read_topology(args.p).angles
    params = torch.from_numpy(angles.params)
    for path in args.trajectories:
        counts, largest = [], []
        for frame in read_frames(args.s, path):
            x, box = torch.from_numpy(frame.positions), torch.from_numpy(frame.box)
            vectors = [minimum_image(x[angles.indices[:, k + 1]] - x[angles.indices[:, k]], box) for k in range(2)]
            energy = vector_energies("angle", vectors, params).numpy()
            counts.append(int((energy > STRAINED_TERM).sum()))
            largest.append(float(energy.max()))
        print(
            f"{path}: {np.mean(counts):.1f} angles above {STRAINED_TERM:g} kJ/mol per frame {counts}, "
            f"largest {max(largest):.0f} kJ/mol"
        )


if __name__ == "__main__":
    main()
