#!/usr/bin/env python3
"""Linear evaluation with MoCo's schedule (lr x0.1 at 60 and 80), as the
original's yt_main_lincls.py; used with --learning-rate 30.0."""
from selfsup.lincls import lincls_script

parse_args, main = lincls_script("Linear evaluation (MoCo schedule)", lr=30.0, schedule=(60, 80), gamma=0.1)

if __name__ == "__main__":
    main()
