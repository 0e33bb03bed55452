"""`gmx-dbm energy` against double-precision `gmx_d mdrun -rerun`, term by term (issue 34's bar:
max(0.01 kJ/mol, 1e-5 relative)), on the systems of tests/test_forcefields.py: the cumene and
octane liquids as published (held-out frame 300), small solvated peptides that `gmx pdb2gmx`
builds in GROMACS' own force fields, and one molecule with every bonded form.

    python benchmarks/bench_energy_agreement.py [--mdp rerun.mdp] [--systems cumene oplsaa ...] [--more]

`--more` adds the peptide in the other force fields GROMACS ships (AMBER03/94/96/99/99SB/GS,
GROMOS 43A1/43A2/45A3/53A5/53A6).

Prints one row per system and term: ours, gmx_d, ours - gmx_d, and whether it meets the bar
(the potential is a sum, shown for information). Everything is built in a temporary folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from forcefield_systems import MORE_PEPTIDES, solvated_peptide  # noqa: E402
from test_forcefields import RF_MDP, SYSTEMS, compare, system, tolerance  # noqa: E402

from gmx_deepbackmap.gromacs import CliEngine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mdp", type=Path, default=RF_MDP, help="settings of both (default: cumene's rerun.mdp)")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--more", action="store_true", help="also the other force fields GROMACS ships")
    args = parser.parse_args()
    engine = CliEngine("gmx_d")
    print(f"{'system':<16}{'term':<16}{'ours':>18}{'gmx_d':>18}{'diff':>12}  bar")
    with tempfile.TemporaryDirectory(prefix="bench-energy-") as tmp:
        for name in [*args.systems, *(MORE_PEPTIDES if args.more else ())]:
            folder = Path(tmp) / name
            folder.mkdir()
            structure, topology = solvated_peptide(name, folder) if name in MORE_PEPTIDES else system(name, folder)
            for term, (ours, theirs) in compare(structure, topology, args.mdp, engine, folder / "gmx").items():
                verdict = (
                    "sum" if term == "Potential" else ("ok" if abs(ours - theirs) <= tolerance(theirs) else "FAIL")
                )
                print(f"{name:<16}{term:<16}{ours:>18.5f}{theirs:>18.5f}{ours - theirs:>12.5f}  {verdict}")


if __name__ == "__main__":
    main()
