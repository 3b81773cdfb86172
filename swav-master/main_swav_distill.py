#!/usr/bin/env python3
"""SwAV + DisCo: SwAV pretraining of a student distilled from a frozen SwAV teacher (Tab5).

Start with `python -m torch.distributed.launch --nproc_per_node=N`, `torchrun`,
or plainly. The teacher is --pretrained (or --teacher). Flags and files: docs/swav.md."""
from selfsup.engine.swav_train import swav_script

parse_args, main = swav_script(distill=True)

if __name__ == "__main__":
    main()
