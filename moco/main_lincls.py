#!/usr/bin/env python3
"""Linear evaluation of a MoCo-v2 checkpoint, as DisCo-pytorch's copy of it:
lr halved at 5, 10, ..., 45, 60, 80 by default; the factor depends on how
many milestones --schedule has (x0.1 for two, x0.5 for eleven, else none;
orig:moco/main_lincls.py:58, 516-526). --gamma F fixes the factor."""
from selfsup.engine.lincls import lincls_script
from selfsup.engine.optim import moco_lincls_gamma

SCHEDULE = (5, 10, 15, 20, 25, 30, 35, 40, 45, 60, 80)
parse_args, main = lincls_script("Linear evaluation (MoCo-v2 checkpoints)", lr=30.0, schedule=SCHEDULE,
                                 gamma=moco_lincls_gamma)

if __name__ == "__main__":
    main()
