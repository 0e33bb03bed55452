"""Bundled data (force fields, molecules, mappings, .mdp templates); see README.md and
`gmx_deepbackmap.bundled`. A regular package so importlib.resources finds it in every install."""
