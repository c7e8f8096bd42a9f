"""The network, one module per stage of the paper, assembled in `distillnerf.py`.

cameras -> encoder -> lift -> voxels (contraction) -> sparse_conv -> renderer -> decoder; occupancy queries.
"""
