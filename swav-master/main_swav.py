#!/usr/bin/env python3
"""SwAV pretraining (Tab5 of the paper's Reproduction.md).

Start with `python -m torch.distributed.launch --nproc_per_node=N`, `torchrun`,
or plainly (one process; GPU or CPU). Flags and files: docs/swav.md."""
from selfsup.engine.swav_train import swav_script

parse_args, main = swav_script(distill=False)

if __name__ == "__main__":
    main()
