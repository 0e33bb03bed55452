"""`gmx-dbm validate-md` with the real gmx on 2 sPS frames and a few MD steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from gmx_deepbackmap.bundled import bundled_path, write_mdp
from gmx_deepbackmap.cli import main
from gmx_deepbackmap.validation import failure_reason, steady_time


@pytest.fixture(scope="module")
def short_md(tmp_path_factory):
    """The bundled NPT template cut to 0.02 ps at dt 2 fs (energies every step)."""
    path = tmp_path_factory.mktemp("mdp") / "short.mdp"
    return write_mdp(bundled_path("sps/md-npt.mdp"), path, nstxout_compressed=0)


def test_validate_md_runs_resumes_and_summarises(tmp_path, sps_data, short_md):
    traj = sps_data / "t568" / "aa.xtc"
    args = [
        "validate-md",
        "-s",
        str(sps_data / "aa.gro"),
        "-p",
        str(bundled_path("sps/topol.top")),
        "--label",
        f"ref={traj}",
        "--label",
        f"again={traj}",
        "--temperature",
        "568",
        "--time",
        "0.02",
        "--frames",
        "0:2",
        "--mdp",
        str(short_md),
        "--engine",
        "cli",
        "--nt",
        "1",
        "-o",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert (out / "potential.png").stat().st_size > 1000 and (out / "summary.csv").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"ref", "again"} and summary["ref"]["frames"] == [0, 1]
    start = summary["ref"]["0 ps"]["Potential"]
    assert start == summary["again"]["0 ps"]["Potential"]  # the same structures start the same
    assert np.isfinite(start["mean"]) and start["sd"] > 0
    done = sorted(out.glob("runs/*/*/done"))
    assert len(done) == 4
    stamps = [p.stat().st_mtime_ns for p in done]
    result = CliRunner().invoke(main, args)  # finished runs are not repeated
    assert result.exit_code == 0, result.output
    assert [p.stat().st_mtime_ns for p in done] == stamps


@pytest.mark.parametrize("engine", ["cli", "gmxapi"])
def test_a_run_past_its_time_limit_is_stopped_and_counted_as_failed(tmp_path, sps_data, short_md, engine):
    if engine == "gmxapi":
        pytest.importorskip("gmxapi")
    traj = sps_data / "t568" / "aa.xtc"
    result = CliRunner().invoke(
        main,
        [
            "validate-md",
            "-s",
            str(sps_data / "aa.gro"),
            "-p",
            str(bundled_path("sps/topol.top")),
            "--label",
            f"ref={traj}",
            "--temperature",
            "568",
            "--time",
            "10",
            "--frames",
            "0:1",
            "--mdp",
            str(short_md),
            "--engine",
            engine,
            "--nt",
            "1",
            "--max-minutes",
            "0.0005",
            "-o",
            str(tmp_path / "out"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1 of 1 runs failed" in result.output and "did not finish within 0.03 s" in result.output


def test_bad_label_is_a_usage_error(tmp_path, sps_data):
    result = CliRunner().invoke(
        main,
        [
            "validate-md",
            "-s",
            str(sps_data / "aa.gro"),
            "-p",
            "x.top",
            "--label",
            "noequals",
            "--temperature",
            "300",
            "-o",
            str(tmp_path),
        ],
    )
    assert result.exit_code != 0 and "expected NAME=FILE" in result.output


def test_steady_time_of_a_relaxing_curve():
    t = np.linspace(0, 100, 1001)
    rng = np.random.default_rng(0)
    energy = 100 * np.exp(-t / 5) + rng.normal(0, 1, t.size)  # relaxes within ~20 ps
    assert 10 < steady_time(t, energy) < 30
    assert steady_time(t, rng.normal(0, 1, t.size)) < 5  # already steady


def test_steady_time_of_a_short_run_still_moving_at_its_end():
    """101 frames (a 10 ps run): the 1 % smoothing window is one frame, and a last frame outside
    the plateau means not steady within the run."""
    t = np.linspace(0, 10, 101)
    energy = np.zeros(t.size)
    energy[-1] = 100.0
    assert steady_time(t, energy) == 10.0


def test_failure_reason_is_gromacs_fatal_error_in_short():
    message = (
        "gmx mdrun (gmxapi) failed: Program: GROMACS, version 2022.5; Source file: src/gromacs/mdlib/"
        "constr.cpp (line 240); Fatal error: Too many LINCS warnings (1207) If you know what you are "
        "doing you can adjust the lincs warning threshold in your mdp file\n"
    )
    assert failure_reason(message) == "Too many LINCS warnings (1207)"
    assert failure_reason("Fatal error: Atomtype HX not found. See the manual.") == "Atomtype HX not found"
    assert failure_reason("gmx grompp failed: no such file\nmore\n") == "gmx grompp failed: no such file"
