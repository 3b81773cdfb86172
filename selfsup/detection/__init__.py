"""Detection transfer: MoCo/DisCo ResNet checkpoints -> detectron2 R-C4.

``convert`` needs only torch; ``data``, ``modeling`` and ``train`` import
detectron2 (see docs/detection.md for how it is installed).
"""

import warnings

# Importing detectron2 0.7 triggers deprecation warnings of newer torch (torch.jit.script)
# and setuptools (pkg_resources) that say nothing about our use; keep stderr readable.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
warnings.filterwarnings("ignore", message=r"pkg_resources is deprecated", category=UserWarning)
