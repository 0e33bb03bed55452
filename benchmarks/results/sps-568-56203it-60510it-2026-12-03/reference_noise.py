"""Reference against reference: how far disjoint sets of held-out sPS reference frames differ by sampling alone.

    python reference_noise.py 0:80:8 4:80:8 2:80:8 0:80:1    # the first selection is the reference

For t568 and t313, scores the AA frames of each further selection (without the training
snapshots) against those of the first with `gmx-dbm compare` (no energy rerun) and prints the
JSD (pair distances: L1) per distribution. A backmapping judged on as many frames cannot resolve
differences below these.
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/, for bench_backmap
from bench_backmap import DATA, held_out_frames

from gmx_deepbackmap.analysis import compare
from gmx_deepbackmap.bundled import bundled_path
from gmx_deepbackmap.structure import parse_frames


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for name in ("t568", "t313"):
            sets = {f: held_out_frames(name, parse_frames(f), out, tag=f.replace(":", "_"))[1] for f in sys.argv[1:]}
            first, *others = sets
            report = compare(
                DATA / "aa.gro",
                bundled_path("sps/topol.top"),
                sets[first],
                {f: sets[f] for f in others},
                out / f"compare-{name}",
                rerun=False,
                progress=False,
            )
            for key, o in report["observables"].items():
                if o.get("kind") in ("distribution", "histogram"):
                    score = "l1" if o["kind"] == "histogram" else "jsd"
                    print(name, key, "  ".join(f"{f}: {v[score]:.4f}" for f, v in o["sets"].items()), flush=True)


if __name__ == "__main__":  # compare's worker processes are spawned: they import this file
    main()
