"""Bad input on the real command line (issue 36): each case ends in one line naming the file (and
line), a non-zero exit below 128, no traceback and no output file; never a crash, a hang or a
silently wrong structure."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_backmap import BEADS_PER_CHAIN, CHAINS, FAST, write_model, write_system

from gmx_deepbackmap import pbc
from gmx_deepbackmap.cli import INTERNAL_ERROR_EXIT, main
from gmx_deepbackmap.structure import Frame, read_frames, write_frames

ROOT = Path(__file__).resolve().parents[1]
ATOMS = CHAINS * 162


@pytest.fixture(scope="module")
def files(tmp_path_factory, sps_data) -> dict[str, Path]:
    """Two PS1 chains: topology, mapping, tiny model, CG .gro and two-frame .xtc, AA .gro."""
    folder = tmp_path_factory.mktemp("bad")
    top, mapping = write_system(folder, sps_data)
    n = CHAINS * BEADS_PER_CHAIN
    cg_lines = (sps_data / "cg.gro").read_text().splitlines()
    cg = folder / "cg.gro"
    cg.write_text("\n".join([cg_lines[0], str(n), *cg_lines[2 : 2 + n], cg_lines[-1]]) + "\n")
    aa_lines = (sps_data / "aa.gro").read_text().splitlines()
    aa = folder / "aa.gro"
    aa.write_text("\n".join([aa_lines[0], str(ATOMS), *aa_lines[2 : 2 + ATOMS], aa_lines[-1]]) + "\n")
    frame = read_frames(cg)[0]
    xtc = folder / "cg.xtc"
    write_cg_frames(xtc, cg, [frame, Frame(frame.positions + 0.05, frame.box, 10.0, 1)])
    model = write_model(folder / "tiny.pt", top, mapping, training={"temperature": 568.0})
    return {"top": top, "map": mapping, "model": model, "cg": cg, "xtc": xtc, "aa": aa}


def write_cg_frames(path: Path, gro: Path, frames: list[Frame]) -> None:
    lines = gro.read_text().splitlines()[2:-1]
    names = [line[10:15].strip() for line in lines]
    write_frames(path, names, ["PS1"] * len(names), [int(line[:5]) for line in lines], frames, overwrite=True)


def backmap_args(files, structure, output, *extra) -> list[str]:
    model = ["--model", str(files["model"]), *FAST, "--thermal-sweeps", "2"]
    return [
        "backmap",
        "-s",
        str(structure),
        "-p",
        str(files["top"]),
        "-m",
        str(files["map"]),
        *model,
        "-o",
        str(output),
    ]


def energy_args(files, structure, output) -> list[str]:
    return ["energy", "-s", str(structure), "-p", str(files["top"]), "-o", str(output), "--no-progress"]


def map_args(files, structure, output) -> list[str]:
    return ["map", "-s", str(structure), "-p", str(files["top"]), "-m", str(files["map"]), "-o", str(output)]


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_refused(result, *fragments: str, outputs: tuple[Path, ...] = ()) -> str:
    """One line `Error: ...` holding `fragments`, an exit below 128, no traceback, no outputs."""
    assert 0 < result.exit_code < 128, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not an uncaught exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    for output in outputs:
        assert not output.exists()
    return lines[0]


def edit_line(source: Path, target: Path, lineno: int, old: str, new: str) -> Path:
    """A copy of `source` with `old` replaced by `new` in line `lineno` (1-based)."""
    lines = source.read_text().splitlines()
    assert old in lines[lineno - 1]
    lines[lineno - 1] = lines[lineno - 1].replace(old, new, 1)
    target.write_text("\n".join(lines) + "\n")
    return target


def swap_lines(source: Path, target: Path, a: int, b: int) -> Path:
    lines = source.read_text().splitlines()
    lines[a - 1], lines[b - 1] = lines[b - 1], lines[a - 1]
    target.write_text("\n".join(lines) + "\n")
    return target


def coordinate(gro: Path, lineno: int) -> str:
    return gro.read_text().splitlines()[lineno - 1][20:28]


# --------------------------------------------------------------------------- 1. stale chunks


def test_chunks_of_inputs_changed_in_place_are_refused(files, tmp_path):
    """Old: the trajectory replaced in place gave exit 0, "Backmapped 0 frames" and the old
    input's structures. Now every input's sha256 is recorded and a change is refused."""
    xtc, work, merged = tmp_path / "in.xtc", tmp_path / "wd", tmp_path / "aa.xtc"
    xtc.write_bytes(files["xtc"].read_bytes())
    chunked = ["-f", xtc, "--frames", "0:1", "--workdir", work, "--chunk-size", "1"]
    assert cli(*backmap_args(files, files["cg"], merged), *chunked).exit_code == 0
    frame = read_frames(files["cg"])[0]
    write_cg_frames(xtc, files["cg"], [Frame(frame.positions + 0.3, frame.box), frame])  # in place
    merged.unlink()
    again = cli(*backmap_args(files, files["cg"], merged), *chunked)
    assert_refused(again, str(work), f"{xtc.resolve()} changed", outputs=(merged,))
    include = files["top"].parent / "topol_PS1.itp"  # an included file counts as the topology
    manifest = json.loads((work / "manifest.json").read_text())
    assert str(include.resolve()) in manifest["run"]["sha256"]
    assert str(files["model"].resolve()) in manifest["run"]["sha256"]


# --------------------------------------------------------------------------- 2. NaN and inf


def test_a_nan_coordinate_stops_backmap_within_seconds_before_the_model_runs(files, tmp_path):
    """Old: the whole pipeline ran, then a traceback and `corrupted size vs. prev_size` (134)."""
    nan = edit_line(files["cg"], tmp_path / "nan.gro", 5, coordinate(files["cg"], 5), "     nan")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, "-m", "gmx_deepbackmap.cli", *backmap_args(files, nan, tmp_path / "aa.gro")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert 0 < proc.returncode < 128 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"Error: {nan}:5: coordinate 'nan' is not a finite number"
    # CPU seconds, not wall-clock ones: on a shared machine the wall clock measures the load (4 s on
    # a quiet machine, 11-17 s with 10 processes on 2 cores); the work is mostly imports.
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert cpu < 10, f"{cpu:.1f} CPU s"
    assert not (tmp_path / "aa.gro").exists()


def test_nan_or_inf_in_any_command_or_frame_is_refused(files, tmp_path):
    """Old: `energy` died in `double free or corruption`, `map` wrote NaN beads, inf hung."""
    inf = edit_line(files["cg"], tmp_path / "inf.gro", 3, coordinate(files["cg"], 3), "    -inf")
    assert_refused(cli(*backmap_args(files, inf, tmp_path / "o.gro")), f"{inf}:3: coordinate '-inf'")
    nan = edit_line(files["aa"], tmp_path / "nan.gro", 7, coordinate(files["aa"], 7), "     nan")
    assert_refused(cli(*energy_args(files, nan, tmp_path / "e.csv")), f"{nan}:7:")
    assert_refused(cli(*map_args(files, nan, tmp_path / "cg.gro")), f"{nan}:7:")
    frame = read_frames(files["cg"])[0]
    bad = frame.positions.copy()
    bad[4, 1] = np.nan
    xtc = tmp_path / "nan.trr"  # .xtc cannot hold a NaN
    write_cg_frames(xtc, files["cg"], [frame, Frame(bad, frame.box, 1.0, 1)])
    out = tmp_path / "o.xtc"
    result = cli(*backmap_args(files, files["cg"], out), "-f", xtc)
    assert_refused(result, f"{xtc}: frame 1: atom 5 at (", "nan", "expected finite coordinates", outputs=(out,))
    huge = edit_line(files["aa"], tmp_path / "huge.gro", 5, coordinate(files["aa"], 5), "   1e+30")
    result = cli(*energy_args(files, huge, tmp_path / "e.csv"))  # old: silently a wrong energy
    assert_refused(result, f"{huge}: frame 0: atom 3 at (1e+30 ", "within 10000 nm of the origin")


# --------------------------------------------------------------------------- 3. zero box


def with_box(source: Path, target: Path, box: str) -> Path:
    """A copy of the .gro `source` with another box line."""
    target.write_text("\n".join([*source.read_text().splitlines()[:-1], box]) + "\n")
    return target


def test_a_zero_box_is_refused_by_energy_and_backmap(files, tmp_path):
    """Old: `energy` hung (killed after 120 s) in the cell reduction of pbc.py."""
    zero = "   0.00000   0.00000   0.00000"
    aa, cg, out = (
        with_box(files["aa"], tmp_path / "aa.gro", zero),
        with_box(files["cg"], tmp_path / "cg.gro", zero),
        tmp_path / "o.gro",
    )
    assert_refused(cli(*energy_args(files, aa, tmp_path / "e.csv")), f"{aa}: frame 0: the box has no volume")
    assert_refused(cli(*backmap_args(files, cg, out)), f"{cg}: frame 0: the box has no volume", outputs=(out,))
    with pytest.raises(ValueError, match="box without volume"):  # the reduction refuses, never loops
        pbc.reduced_cell(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="not finite"):  # MDAnalysis' grid never sees a NaN
        pbc.neighbour_pairs(np.full((3, 3), np.nan), np.eye(3) * 3, 1.0)


# --------------------------------------------------------------------------- 4. names and order


def test_beads_out_of_order_renamed_or_of_another_residue_are_refused(files, tmp_path):
    """Old: all three backmapped with exit 0."""
    out = tmp_path / "o.gro"
    swapped = swap_lines(files["cg"], tmp_path / "swapped.gro", 4, 5)
    assert_refused(cli(*backmap_args(files, swapped, out)), f"{swapped}:4: residue and atom name 'PS1 B2'", "'PS1 S1'")
    renamed = edit_line(files["cg"], tmp_path / "renamed.gro", 12, "    S5", "    XX")
    assert_refused(cli(*backmap_args(files, renamed, out)), f"{renamed}:12:", "'PS1 XX'", "1 of 40 atoms differ")
    sol = tmp_path / "sol.gro"
    sol.write_text(files["cg"].read_text().replace("PS1 ", "SOL "))
    assert_refused(cli(*backmap_args(files, sol, out)), f"{sol}:3:", "'SOL B1'", "'PS1 B1'", outputs=(out,))


def test_atoms_out_of_order_are_not_mapped_and_renamed_ones_only_with_allow_renamed(files, tmp_path):
    """Old: `map` of two swapped atom lines gave exit 0 and a bead at the wrong place."""
    out = tmp_path / "cg.gro"
    swapped = swap_lines(files["aa"], tmp_path / "swapped.gro", 3, 4)
    assert_refused(cli(*map_args(files, swapped, out)), f"{swapped}:3:", outputs=(out,))
    line = files["aa"].read_text().splitlines()[9]
    renamed = edit_line(files["aa"], tmp_path / "renamed.gro", 10, line[10:15], "  XYZ")
    assert_refused(cli(*map_args(files, renamed, out)), f"{renamed}:10:", "--allow-renamed", outputs=(out,))
    accepted = cli(*map_args(files, renamed, out), "--allow-renamed")
    assert accepted.exit_code == 0 and "Warning: " in accepted.output and out.exists()


# --------------------------------------------------------------------------- 5. box too small


def test_a_box_narrower_than_twice_the_cutoff_is_refused_in_nm(files, tmp_path):
    """Old: a 54-line traceback ending "Cutoff 2.71 too large for box (max 2.5)" (Angstrom)."""
    small = "   2.00000   2.00000   2.00000"
    cg, out = with_box(files["cg"], tmp_path / "cg.gro", small), tmp_path / "o.gro"
    line = assert_refused(
        cli(*backmap_args(files, cg, out)), f"{cg}: frame 0: the box is 2.000 nm wide", outputs=(out,)
    )
    assert "twice the cut-off of 1.1 nm" in line
    aa = with_box(files["aa"], tmp_path / "aa.gro", small)
    assert_refused(cli(*energy_args(files, aa, tmp_path / "e.csv"), "--cutoff", "1.2"), "cut-off of 1.201 nm")


# --------------------------------------------------------------------------- 6. unwritable output


def test_outputs_that_cannot_be_written_are_refused_before_any_work(files, tmp_path):
    """Old: a FileNotFoundError traceback once the work was done."""
    for args in (
        backmap_args(files, files["cg"], "/proc/x.gro"),
        map_args(files, files["aa"], "/proc/x.gro"),
        energy_args(files, files["aa"], "/proc/x.csv"),
    ):
        assert_refused(cli(*args), "/proc/x.", "cannot write in /proc")
    (tmp_path / "file").write_text("")
    below_a_file = tmp_path / "file" / "cg.gro"
    assert_refused(cli(*map_args(files, files["aa"], below_a_file)), f"{below_a_file}: cannot write", "not a folder")


# --------------------------------------------------------------------------- 7. bad trajectories


def test_garbage_empty_or_truncated_trajectories_are_named(files, tmp_path):
    """Old: the error named the .gro given with -s, then an "Exception ignored ... '_xdr'" traceback."""
    garbage, empty, cut = tmp_path / "garbage.xtc", tmp_path / "empty.xtc", tmp_path / "cut.xtc"
    garbage.write_bytes(np.random.default_rng(0).bytes(3000))
    empty.write_bytes(b"")
    cut.write_bytes(files["xtc"].read_bytes()[:100])
    out = tmp_path / "o.xtc"
    assert_refused(cli(*backmap_args(files, files["cg"], out), "-f", garbage), f"{garbage}: cannot read")
    assert_refused(cli(*backmap_args(files, files["cg"], out), "-f", empty), f"{empty}: empty file")
    assert_refused(cli(*backmap_args(files, files["cg"], out), "-f", cut), f"{cut}: ", outputs=(out,))


# --------------------------------------------------------------------------- 8. corrupt chunk folders


def test_merge_names_the_corrupt_chunk_or_manifest(files, tmp_path):
    """Old: a traceback that named no file."""
    work, out = tmp_path / "wd", tmp_path / "aa.xtc"
    work.mkdir()
    manifest = work / "manifest.json"
    manifest.write_text('{"run": ')
    assert_refused(cli("merge", work, "-o", out), f"{manifest}: not a manifest", outputs=(out,))
    manifest.write_text(json.dumps({"run": {"frames": [0, 1, 1], "chunk_size": 1, "topology": str(files["top"])}}))
    chunk = work / "chunk00000.xtc"
    chunk.write_bytes(files["xtc"].read_bytes()[:-50])
    assert_refused(cli("merge", work, "-o", out), f"{chunk}: ", outputs=(out,))
    chunk.write_bytes(files["xtc"].read_bytes())  # a readable chunk, but of CG beads
    assert_refused(cli("merge", work, "-o", out), f"{chunk}: 40 atoms", outputs=(out,))


# --------------------------------------------------------------------------- 9. frame slices


def test_frame_slices_are_strict(files, tmp_path):
    """Old: "ValueError: Step size is zero"."""
    out = tmp_path / "o.xtc"
    base = [*backmap_args(files, files["cg"], out), "-f", files["xtc"]]
    assert_refused(cli(*base, "--frames", "0:1:0"), "--frames '0:1:0': the step s must not be 0")
    assert_refused(cli(*base, "--frames", "a:b"), "expected integers")
    assert_refused(cli(*base, "--frames", "5:9"), f"{files['xtc']}: no frames selected")


# --------------------------------------------------------------------------- 10. broken .gro


def test_broken_gro_files_are_named_with_their_line(files, tmp_path):
    """Old: "index 0 is out of bounds", "cannot access local variable 'unitcell'", no line number."""
    text = files["cg"].read_text()
    lines = text.splitlines()
    cases = {
        "cut.gro": ("\n".join(lines[:6]) + "\n" + lines[6][:30], ":7: atom line too short"),
        "nobox.gro": ("\n".join(lines[:-1]) + "\n", ":43: no box line after the atoms"),
        "empty.gro": ("", ": empty file"),
        "count.gro": (text.replace(lines[1], "abc", 1), ":2: 'abc': expected the number of atoms"),
        "short.gro": ("\n".join(lines[:10]) + "\n", ":11: the file ends after 8 of 40 atom lines"),
        "number.gro": (text.replace(lines[4], lines[4][:28] + "   x.yz" + lines[4][35:], 1), ":5: coordinate"),
        "resid.gro": (text.replace(lines[5], "  ab" + lines[5][4:], 1), ":6: residue number"),
        "box.gro": ("\n".join([*lines[:-1], "1 2"]) + "\n", ":43: box line with 2 numbers"),
    }
    out = tmp_path / "o.gro"
    for name, (content, message) in cases.items():
        gro = tmp_path / name
        gro.write_text(content)
        assert_refused(cli(*backmap_args(files, gro, out)), f"{gro}{message}", outputs=(out,))


# --------------------------------------------------------------------------- internal errors


def test_an_internal_error_is_one_line_pointing_to_its_log(files, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("gmx_deepbackmap.mapping.map_to_cg", broken)
    result = cli(*map_args(files, files["aa"], tmp_path / "cg.gro"))
    assert result.exit_code == INTERNAL_ERROR_EXIT
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and line.startswith("Internal error (RuntimeError)") and "--debug" in line
    log = Path(line.split("traceback in ")[1].split(" ")[0])
    assert "RuntimeError: a bug" in log.read_text()
    log.unlink()
    debug = CliRunner().invoke(main, ["--debug", *map_args(files, files["aa"], tmp_path / "cg.gro")])
    assert isinstance(debug.exception, RuntimeError)
