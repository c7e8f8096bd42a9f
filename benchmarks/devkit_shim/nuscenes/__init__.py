"""A minimal stand-in for nuscenes-devkit's table reader, for machines without the devkit (the lent GPU machine).

Only what distillnerf_core uses: `NuScenes(version, dataroot, verbose)` with one attribute per table and
`get(table, token)`. Put `benchmarks/devkit_shim` on PYTHONPATH there; everywhere else the real devkit is used.
"""
