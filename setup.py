from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="gmx-deepbackmap",
    version="0.1.0",
    description="Deep generative backmapping (DeepBackmap) of coarse-grained GROMACS systems",
    long_description=Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    # topologies/ (force fields, molecules, mappings, .mdp templates) installs as
    # gmx_deepbackmap.topologies, so the bundled files travel with the package.
    packages=find_packages(include=["gmx_deepbackmap", "gmx_deepbackmap.*"]) + ["gmx_deepbackmap.topologies"],
    package_dir={"gmx_deepbackmap.topologies": "topologies"},
    package_data={"gmx_deepbackmap": ["models/*.pt"], "gmx_deepbackmap.topologies": ["*/*", "*.md"]},
    python_requires=">=3.11",  # tomllib
    install_requires=[
        # scripts/setup.sh installs torch==2.13.0 (the CPU build on disk) first; any torch >= 2.2 works,
        # CUDA builds included.
        "torch>=2.2",
        "numpy>=1.24",
        "parmed>=4.2",
        "MDAnalysis>=2.7",
        "click>=8.1",
        "tqdm>=4.66",
        "pyedr>=0.8",
        "matplotlib>=3.7",
        "numba>=0.59",  # the last sampler stage's pair-energy loop (thermal._pair_changes)
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "ruff", "snakemake>=8"],
        "gmxapi": ["gmxapi==0.4.2"],
        "slurm": ["snakemake-executor-plugin-slurm"],
    },
    entry_points={"console_scripts": ["gmx-dbm=gmx_deepbackmap.cli:main"]},
)
