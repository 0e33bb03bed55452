"""Fuzzing the readers of user files (issue 36): random and mutated .gro, .top/.itp (through the
preprocessor), mapping and TOML config files end in the package's `InputError` or in a valid
result, never in another exception, a hang or a crash. Each test prints how many inputs it tried;
GMXDBM_FUZZ_EXAMPLES sets how many (default `EXAMPLES`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gmx_deepbackmap.errors import InputError
from gmx_deepbackmap.mapping import read_mapping
from gmx_deepbackmap.structure import read_frames
from gmx_deepbackmap.topology import read_topology
from gmx_deepbackmap.training import read_config

EXAMPLES = int(os.environ.get("GMXDBM_FUZZ_EXAMPLES", "3000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # the machine is shared; a hang still shows as a test that never ends
    database=None,
    derandomize=True,  # the same inputs in every run: a failure here is reproducible
    suppress_health_check=list(HealthCheck),
)

GRO = """two beads
    3
    1PS1     B1    1   0.184   0.129   0.316
    1PS1     S1    2   0.134   0.200   0.554
    2PS1     B1    3   1.234   1.100   2.000
   3.00000   3.00000   3.00000
"""

ITP = """[ moleculetype ]
TRI  3
[ atoms ]
1  CT  1  TRI  C1  1  -0.1  12.011
2  CT  1  TRI  C2  2   0.1  12.011
3  HC  1  TRI  H3  3   0.0   1.008
[ bonds ]
1  2  1  0.153  2.0e5
2  3  1  0.109  2.8e5
[ angles ]
1  2  3  1  110.0  300.0
#ifdef POSRES
[ position_restraints ]
1  1  1000  1000  1000
#endif
"""

TOP = """#define KB 2.0e5
[ defaults ]
1  2  yes  0.5  0.8333
[ atomtypes ]
CT  12.011  0.0  A  0.35  0.276
HC   1.008  0.0  A  0.25  0.125
[ bondtypes ]
CT  CT  1  0.153  KB
#include "tri.itp"
[ system ]
fuzz
[ molecules ]
TRI  2
"""

MAPPING = """[ moleculetype ]
TRI
[ beads ]
A  T  B
B  T  A  geometric
[ members ]
A  C1  C2:2
B  H3
[ owners ]
A  C1  C2
B  H3
[ modifiers ]
out  H3  C2  C1
"""

CONFIG = """aa = ["aa"]
topology = "topol.top"
steps = 10
betas = [0.5, 0.9]
temperature = 300.0
recurrent = true
[network]
width = 4
blocks = [1, 1, 1]
"""

# What mutations put in: numbers at and past the edges, names, section and preprocessor syntax.
TOKENS = [
    "",
    " ",
    "\n",
    "0",
    "-1",
    "1",
    "2",
    "3",
    "1e308",
    "-1e308",
    "nan",
    "inf",
    "-inf",
    "1.5",
    "abc",
    "99999999999",
    "[",
    "]",
    "[ atoms ]",
    "[ beads ]",
    "[ molecules ]",
    "[ moleculetype ]",
    "[ network ]",
    "#include",
    "#ifdef",
    "#endif",
    "#else",
    "#define",
    ";",
    "\\",
    ":",
    "C1:0",
    "C2:-1",
    "=",
    '"',
    "'",
    "{",
    "}",
    ",",
    "true",
    "-",
    "\t",
    "\x00",
    "é",
    "\ufffd",
    "tri.itp",
    '"tri.itp"',
    "TRI",
    "PS1",
    "B1",
    "C1",
]


@st.composite
def mutated(draw, base: str) -> bytes:
    """`base` after a few random edits (lines dropped, doubled, swapped, cut; tokens put in), or
    random bytes; as bytes, so that invalid UTF-8 is tried too."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.binary(max_size=300))
    lines = base.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            lines = [""]
        i, j = (draw(st.integers(0, len(lines) - 1)) for _ in range(2))
        op = draw(st.sampled_from(["drop", "double", "swap", "token", "token", "token", "cut", "chars"]))
        if op == "drop":
            del lines[i]
        elif op == "double":
            lines.insert(i, lines[j])
        elif op == "swap":
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "cut":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
            if draw(st.booleans()):
                lines = lines[: i + 1]
        else:
            words = lines[i].split(" ")
            k = draw(st.integers(0, len(words)))
            new = draw(st.sampled_from(TOKENS)) if op == "token" else draw(st.text(max_size=5))
            words[k : k + draw(st.integers(0, 1))] = [new]
            lines[i] = " ".join(words)
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def fuzz(reader, base: str, name: str, capsys, **files: str) -> None:
    """Feed `reader` (a function of a path) mutations of `base` written to `name` next to the
    unchanged `files`; every outcome is a result or an `InputError`."""
    tried, refused = [0], [0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for other, text in files.items():
            (folder / other).write_text(text)
        path = folder / name
        path.write_text(base)
        reader(path)  # the unmutated file is valid

        @FUZZ
        @given(mutated(base))
        def run(data: bytes) -> None:
            path.write_bytes(data)
            tried[0] += 1
            try:
                reader(path)
            except InputError:
                refused[0] += 1

        run()
    with capsys.disabled():
        print(f"\n{name}: {tried[0]} fuzzed inputs, {refused[0]} refused with InputError, the rest read")
    assert tried[0] >= EXAMPLES // 2


def test_gro_reader(capsys):
    def read(path: Path) -> None:
        for frame in read_frames(path):
            assert np.isfinite(frame.positions).all() and abs(np.linalg.det(frame.box)) > 0

    fuzz(read, GRO, "fuzz.gro", capsys)


def test_topology_reader_and_preprocessor(capsys):
    fuzz(read_topology, TOP, "topol.top", capsys, **{"tri.itp": ITP})


def test_included_itp(capsys):
    fuzz(lambda path: read_topology(path.parent / "topol.top"), ITP, "tri.itp", capsys, **{"topol.top": TOP})


def test_mapping_reader(capsys, tmp_path):
    (tmp_path / "tri.itp").write_text(ITP)
    (tmp_path / "topol.top").write_text(TOP)
    topology = read_topology(tmp_path / "topol.top")
    fuzz(lambda path: read_mapping(path, topology), MAPPING, "tri.map", capsys)


def test_config_reader(capsys):
    fuzz(read_config, CONFIG, "train.toml", capsys)
