"""Detection transfer: MoCo/DisCo ResNet checkpoints -> detectron2 R-C4.

``convert`` needs only torch; ``data``, ``modeling`` and ``train`` import
detectron2 (see docs/detection.md for how it is installed).
"""
