#!/usr/bin/env python3
"""Training curves of one or more runs from their metrics.csv files.

    python data/plot_curves.py RUN_DIR [RUN_DIR ...] --out curves.png

Same as `python -m selfsup.analysis.curves`; see docs/analysis.md.
"""

from selfsup.analysis.curves import main

if __name__ == "__main__":
    main()
