#!/usr/bin/env bash
# Build GROMACS 2022.5 with the gmxapi C++ API into a prefix (once), then install the gmxapi
# Python package against it. Debian's own gromacs package lacks gmxapi, and PyPI's gmxapi 0.4.2
# compiles only against a GROMACS that has it.
#
#   scripts/install-gromacs-gmxapi.sh [PREFIX]
#
# PREFIX defaults to $GMXDBM_GROMACS_PREFIX or ~/.cache/gmx-deepbackmap/gromacs-2022.5-gmxapi.
# The build (about 20-25 min on 2 cores) is skipped when PREFIX already holds a finished build;
# the Python package is skipped when `import gmxapi` already works.
set -euo pipefail

prefix=${1:-${GMXDBM_GROMACS_PREFIX:-$HOME/.cache/gmx-deepbackmap/gromacs-2022.5-gmxapi}}
version=2022.5
stamp="$prefix/.gmx-deepbackmap-build-complete"
python=${PYTHON:-python3}
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"

if [ ! -f "$stamp" ]; then
    echo "Building GROMACS $version with gmxapi into $prefix"
    export DEBIAN_FRONTEND=noninteractive
    if ! grep -rqs "^Types:.*deb-src" /etc/apt/sources.list.d/ && ! grep -qs "^deb-src" /etc/apt/sources.list; then
        printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            | $sudo tee /etc/apt/sources.list.d/gmx-deepbackmap-src.sources >/dev/null
        $sudo apt-get update -qq
    fi
    $sudo apt-get install -y -qq cmake ninja-build libfftw3-dev libopenmpi-dev dpkg-dev >/dev/null
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && apt-get source --download-only -qq gromacs="$version"-2)
    tar -xf "$work"/gromacs_"$version".orig.tar.* -C "$work"
    src=$(find "$work" -maxdepth 1 -type d -name "gromacs-$version*" | head -n 1)
    cmake -S "$src" -B "$work/build" -G Ninja \
        -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_BUILD_TYPE=Release \
        -DGMXAPI=ON -DGMX_MPI=OFF -DGMX_THREAD_MPI=ON -DGMX_GPU=OFF \
        -DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON \
        -DGMX_FFT_LIBRARY=fftw3 -DGMX_BUILD_OWN_FFTW=OFF \
        -DBUILD_TESTING=OFF -DGMX_BUILD_MANUAL=OFF -DGMX_INSTALL_NBLIB_API=OFF \
        -DGMX_SIMD=AVX2_256 -DGMX_DEFAULT_SUFFIX=ON >/dev/null
    cmake --build "$work/build" --parallel "$(nproc)"
    cmake --install "$work/build" >/dev/null
    touch "$stamp"
fi

if ! "$python" -c "import gmxapi" 2>/dev/null; then
    gmxapi_ROOT="$prefix" \
    CMAKE_ARGS="-Dgmxapi_ROOT=$prefix -C $prefix/share/cmake/gromacs/gromacs-hints.cmake" \
        "$python" -m pip install -q gmxapi==0.4.2
fi
echo "GROMACS with gmxapi: $prefix"
