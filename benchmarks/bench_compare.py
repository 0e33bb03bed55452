"""Speed of `gmx-dbm compare`: the 78 held-out sPS frames at 568 K against themselves as 3 sets.

    python benchmarks/bench_compare.py [--frames 0:78] [--sets 3] [--workers 2] [--no-rerun] [--keep DIR]

Prints the wall-clock time and the CPU time of this process and its children (worker processes,
GROMACS) together; on a busy machine the wall time overstates what an idle one needs, while CPU
time / cores estimates it.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from gmx_deepbackmap.analysis import available_cores
from gmx_deepbackmap.bundled import bundled_path
from gmx_deepbackmap.report import compare
from gmx_deepbackmap.structure import parse_frames

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sps"


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="0:78", help="b:e:s of t568/aa.xtc (default: all 78)")
    parser.add_argument("--sets", type=int, default=3, help="labelled copies of the reference (default 3)")
    parser.add_argument("--workers", type=int, default=None, help="frame-analysis processes (default: cores)")
    parser.add_argument("--no-rerun", action="store_true", help="skip the GROMACS energy reruns")
    parser.add_argument("--keep", help="write the report to this folder (default: a temporary one)")
    args = parser.parse_args()

    trajectory = DATA / "t568" / "aa.xtc"
    sets = {f"copy{k + 1}": trajectory for k in range(args.sets)}
    workers = args.workers or available_cores()
    start_wall, start_cpu = time.perf_counter(), cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        report = compare(
            DATA / "aa.gro",
            bundled_path("sps/topol.top"),
            trajectory,
            sets,
            args.keep or tmp,
            frames=parse_frames(args.frames),
            rerun=not args.no_rerun,
            workers=workers,
            progress=False,
            overwrite=True,
        )
    wall, cpu = time.perf_counter() - start_wall, cpu_seconds() - start_cpu
    frames = report["reference"]["frames"]
    print(
        f"compare: {frames} frames x (reference + {args.sets} sets), {workers} workers, "
        f"rerun {'off' if args.no_rerun else 'on'}"
    )
    print(f"wall {wall:.1f} s, CPU {cpu:.1f} s (CPU / {available_cores()} cores = {cpu / available_cores():.1f} s)")


if __name__ == "__main__":
    main()
