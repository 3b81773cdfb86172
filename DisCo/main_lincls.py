#!/usr/bin/env python3
"""Linear evaluation of a DisCo student: lr halved at 5, 10, ..., 45, 60, 80;
x0.5 at every milestone of any --schedule (orig:DisCo/main_lincls.py:59, 515-519)."""
from selfsup.engine.lincls import lincls_script

SCHEDULE = (5, 10, 15, 20, 25, 30, 35, 40, 45, 60, 80)
parse_args, main = lincls_script("Linear evaluation (DisCo schedule)", lr=30.0, schedule=SCHEDULE, gamma=0.5)

if __name__ == "__main__":
    main()
