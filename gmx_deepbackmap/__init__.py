"""gmx-deepbackmap: deep generative backmapping of coarse-grained GROMACS systems (DeepBackmap)."""

__version__ = "0.1.0"
