"""The Snakemake workflow end to end on a tiny config: map -> train -> backmap -> compare -> validate-md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gmx_deepbackmap.bundled import bundled_path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = "\n".join(
    [
        'aa = ["{aa}"]',
        'cg = ["{cg}"]',
        'topology = "{top}"',
        "steps = 2",
        "batch_size = 4",
        "n_critic = 1",
        "checkpoint_every = 1",
        "log_every = 1",
        "[network]",
        "width = 4",
        "noise_dim = 4",
        "",
    ]
)


@pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")
def test_snakemake_workflow_runs_end_to_end(tmp_path, sps_data):
    train = tmp_path / "train.toml"
    train.write_text(
        TRAIN.format(
            aa=sps_data / "train_t568" / "aa" / "90.gro",
            cg=sps_data / "train_t568" / "cg" / "90.gro",
            top=bundled_path("sps/topol.top"),
        )
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        "\n".join(
            [
                f"topology: {bundled_path('sps/topol.top')}",
                "mapping: []",
                f"train_config: {train}",
                f"reference_structure: {sps_data / 'aa.gro'}",
                f"reference_trajectory: {sps_data / 't313' / 'aa.xtc'}",
                "n_frames: 2",
                "temperature: 313",
                "md_time: 0.004",
                "outdir: results",
                'backmap_options: "--gibbs-sweeps 0 --orientations 1 --repair-rounds 0 --chunk-size 1"',
                'compare_options: "--no-rerun"',
                'md_options: "--engine cli --nt 1"',
                "",
            ]
        )
    )
    result = subprocess.run(
        [
            shutil.which("snakemake"),
            "--snakefile",
            str(ROOT / "workflows" / "Snakefile"),
            "--configfile",
            str(config),
            "--directory",
            str(tmp_path),
            "--cores",
            "2",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "results"
    report = json.loads((out / "compare" / "report.json").read_text())
    assert report["sets"]["dbm"]["frames"] == 2
    summary = json.loads((out / "md" / "summary.json").read_text())
    assert summary["reference"]["frames"] == [0, 1] and summary["reference"]["failed"] == []
    # the tiny untrained model's structures may make MD fail: then that is what the summary says
    assert sorted(summary["dbm"]["frames"] + summary["dbm"]["failed"]) == [0, 1]
    assert sorted(p.name for p in (out / "chunks").glob("chunk*.xtc")) == ["chunk00000.xtc", "chunk00001.xtc"]


SLURM_ENV = {
    "SLURM_ARRAY_TASK_ID": "3",
    "SLURM_CPUS_PER_TASK": "4",
    "SLURM_NNODES": "2",
    "SLURM_JOB_ID": "77",
    "SLURM_GPUS_PER_NODE": "4",
    "SLURM_JOB_NODELIST": "node[1-2]",
    "DRY_RUN": "1",
}
SCRIPTS = {
    "train.sbatch": ["workflows/train-sps-568.toml"],
    "backmap-array.sbatch": ["cg.gro", "cg.xtc", "topol.top", "model.pt", "chunks", "10"],
    "merge.sbatch": ["chunks", "aa.xtc"],
    "baseline.sbatch": ["cg.gro", "cg.xtc", "topol.top", "baseline.xtc"],
    "validate-md.sbatch": ["aa.gro", "topol.top", "313", "md", "dbm=dbm.xtc", "baseline=bl.xtc"],
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_slurm_script_dry_run_uses_real_options(script):
    """Each script parses (bash -n), and its dry run prints a gmx-dbm command whose options exist."""
    from click.testing import CliRunner

    from gmx_deepbackmap.cli import main

    path = ROOT / "workflows" / "slurm" / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    printed = subprocess.run(
        ["bash", str(path), *SCRIPTS[script]],
        env={**os.environ, **SLURM_ENV},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    start = printed.index("gmx-dbm") if "gmx-dbm" in printed else printed.index("gmx_deepbackmap.cli")
    command, *args = printed[start + 1 :]
    usage = CliRunner().invoke(main, [command, "--help"]).output
    options = [a for a in args if a.startswith("-")]
    assert options and all(f" {o} " in usage or f" {o}," in usage for o in options), (options, usage)
