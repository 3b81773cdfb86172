#!/usr/bin/env python3
"""Linear evaluation with MoCo's schedule (lr x0.1 at 60 and 80), used with
--learning-rate 30.0. The original repository has no DisCo/yt_main_lincls.py;
its moco/yt_main_lincls_schedule.py is this evaluation: moco/main_lincls.py
with default --schedule 60 80 and the same milestone-count rule (x0.1 for
two, x0.5 for eleven, else none; orig:moco/yt_main_lincls_schedule.py:58, 518-527)."""
from selfsup.engine.lincls import lincls_script
from selfsup.engine.optim import moco_lincls_gamma

parse_args, main = lincls_script("Linear evaluation (MoCo schedule)", lr=30.0, schedule=(60, 80),
                                 gamma=moco_lincls_gamma)

if __name__ == "__main__":
    main()
