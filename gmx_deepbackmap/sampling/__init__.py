"""Backmapping: atomistic structures sampled from CG frames with a trained generator
(method.md sections 2 and 8), as a pipeline of stages over one frame at a time.

The stages (`build_pipeline`; one file each):

1. `forward`: every step placed once, heavy atoms then hydrogens, rank by rank along the beads;
2. `gibbs`: Gibbs sweeps, every step re-placed seeing all other atoms (chromatic batches);
3. `repair`: rounds that re-place the few beads left strained;
4. `bonds`: bond lengths restored to the constraints, keeping the generated shape;
5. `mirror`: chiral centres still inverted mirrored back, their surroundings re-placed;
6. `metropolis`: Metropolis sweeps with the force field at the frames' temperature.

Every generative step is drawn under K turns about its bead's frame axis, all in one batch, and
the turn with the lowest local force-field energy with its surroundings is kept among those that
keep the handedness of the chiral centres the model recorded (`state.place`). `backmap_frame`
samples one frame; `backmap` runs files through the frame driver (`frames.run_frames`).
"""

from .frame import backmap_frame
from .pipeline import Pipeline, Stage, build_pipeline
from .run import backmap
from .state import FrameState, native_bfloat16, uses_bfloat16
from .system import SystemParts, frames_temperature, noise_scale_for, prepare_system

__all__ = [
    "FrameState",
    "Pipeline",
    "Stage",
    "SystemParts",
    "backmap",
    "backmap_frame",
    "build_pipeline",
    "frames_temperature",
    "native_bfloat16",
    "noise_scale_for",
    "prepare_system",
    "uses_bfloat16",
]
