"""Exports of a trained backbone for the world outside this project
(tools/export.py, docs/export.md): safetensors under the keys of the
backbone's own library (timm or torchvision), ONNX, TorchScript.

``source`` reads any checkpoint the project writes or reads, ``library``
names the library model and writes the line that loads it, ``writers``
writes and checks each format, ``exporter`` ties them together. Files are
read back by selfsup.models.exported (and by every ``--pretrained`` and
``--teacher`` through selfsup.core.checkpoint.load_file).
"""
