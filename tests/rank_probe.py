"""One process of a cluster launch, for tests/test_slurm_env.py: it reads its
placement as the training scripts do (runtime.launcher_placement), joins a
gloo group through env:// and writes what it saw to OUT/rank<RANK>.json:
the placement, the group's own rank and size, and every rank's placement
gathered over the group."""

import json
import os
import sys

import torch.distributed as dist

from selfsup.engine.runtime import launcher_placement


def main(out):
    place = launcher_placement()
    assert place is not None, "not started by a launcher: RANK/WORLD_SIZE/LOCAL_RANK missing"
    dist.init_process_group("gloo", init_method="env://", world_size=place.world_size, rank=place.rank)
    mine = {"rank": place.rank, "local_rank": place.local_rank, "per_node": place.per_node}
    everyone = [None] * place.world_size
    dist.all_gather_object(everyone, mine)
    report = {
        **mine,
        "world_size": place.world_size,
        "group_rank": dist.get_rank(),
        "group_size": dist.get_world_size(),
        "master": f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}",
        "gathered": everyone,
    }
    dist.destroy_process_group()
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"rank{place.rank}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
