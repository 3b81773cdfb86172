"""Training curves of one or more runs from their metrics.csv files.

    python data/plot_curves.py RUN_DIR [RUN_DIR ...] --out curves.png

Same as `python -m selfsup.analysis.curves`; see docs/analysis.md.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfsup.analysis.curves import main  # noqa: E402

if __name__ == "__main__":
    main()
