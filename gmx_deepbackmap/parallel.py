"""Set-up shared by the compiled (numba) loops: their thread pool and its size."""

from __future__ import annotations

import numba
import torch

# numba's own thread pool, not OpenMP: its OpenMP layer shares torch's runtime and leaves torch's
# thread count changed, so with torch.set_num_threads(1) the next frame came out different.
numba.config.THREADING_LAYER = "workqueue"

# Sums may be reordered (SIMD) and multiply-adds fused; infinities and NaN keep their meaning.
FAST_MATH = {"reassoc", "contract", "nsz"}


def match_torch_threads() -> int:
    """As many numba threads as torch uses (at most numba's pool); returns their number."""
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(threads)
    return threads
