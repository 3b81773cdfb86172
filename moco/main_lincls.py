#!/usr/bin/env python3
"""Linear evaluation of a MoCo-v2 checkpoint (MoCo's schedule: x0.1 at 60, 80)."""
from selfsup.lincls import lincls_script

parse_args, main = lincls_script("Linear evaluation (MoCo schedule)", lr=30.0, schedule=(60, 80), gamma=0.1)

if __name__ == "__main__":
    main()
