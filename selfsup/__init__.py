"""selfsup: the shared library behind the DisCo-pytorch scripts.

MoCo-v2 pretraining, DisCo distillation, SwAV, linear evaluation, detection
transfer and analysis tools all import from here; the scripts in moco/,
DisCo/, swav-master/, detection/ and data/ only parse flags and call in.
"""

__version__ = "0.1.0"
