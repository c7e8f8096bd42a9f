"""One torchrun rank of test/core/test_sharding.py: the sharded offline jobs, one after the other, in one process
(torch is imported once per rank: a launch costs seconds of CPU on a loaded machine).

    python -m torch.distributed.run --nproc-per-node 2 test/shard_driver.py DATAROOT VERSION CHECKPOINT OUT
"""

import sys

from distillnerf_core.cli import cache_features, eval, fit_scene

FIT = ["--steps", "2", "--rays", "32", "--image-hw", "16", "32", "--render-hw", "8", "16", "--holdout-every", "0",
       "--sky", "none", "--threads", "1", "--quiet"]


def main(dataroot: str, version: str, checkpoint: str, out: str) -> int:
    rc = cache_features.main(["--dataroot", dataroot, "--version", version, "--teacher", "oracle", "--oracle-stride",
                              "2", "--no-progress", "--out", f"{out}/cache"])
    rc = rc or eval.main(["--checkpoint", checkpoint, "--dataroot", dataroot, "--version", version, "--threads", "1",
                          "--no-progress", "--json", f"{out}/eval.json", "--details-json", f"{out}/details.json"])
    rc = rc or fit_scene.main(["--dataroot", dataroot, "--version", version, *FIT, "--out", f"{out}/nerf"])
    return rc


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
