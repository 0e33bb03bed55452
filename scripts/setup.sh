#!/usr/bin/env bash
# One-command set-up on a fresh Debian (bookworm) machine: Debian's GROMACS, a cached GROMACS
# 2022.5 build with gmxapi (about 20-25 min the first time, skipped afterwards), and this package
# with its dependencies. torch is pinned to the CPU build; any CUDA build of torch also works.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq gromacs >/dev/null
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[test]"
PYTHON=python3 bash scripts/install-gromacs-gmxapi.sh
