#!/usr/bin/env bash
# Install detectron2 for the detection transfer (detection/), from the package registry only.
#
# The official detectron2 is not published on the registry under its own name. We use
# sal-detectron2==0.7.2, a packaging of upstream detectron2 (code of detectron2 0.6+,
# imported as `detectron2`). Its only wheel is tagged cp310-none-any, so pip on any other
# Python refuses it; its code is pure Python apart from one CPython-3.10 `_C` extension
# that detectron2 does not need for R-C4 Faster/Mask R-CNN (ROIAlign and NMS come from
# torchvision, COCO AP from pycocotools). We therefore
#   1. download that wheel (pip download --python-version 3.10) and check its sha256,
#   2. unpack it with the `wheel` package, delete the 3.10-only _C extension, mark it
#      pure Python (Tag py3-none-any, Root-Is-Purelib true) and relax its `numpy<2`
#      requirement to `numpy` (torch 2.14 / this project use numpy 2; the detectron2
#      code paths we use work with it, see tests/test_detection.py),
#   3. repack it as sal_detectron2-0.7.2+purepy-py3-none-any.whl (the local version
#      marks the rebuild; RECORD hashes are regenerated) and install it with --no-deps,
#      after its dependencies and setuptools<81 (detectron2.model_zoo imports pkg_resources).
#
# Idempotent: does nothing when `import detectron2` already works (this build or any other,
# e.g. one built from the official source repository); FORCE=1 reinstalls this build.
# PYTHON: the interpreter of the target environment (default: .venv/bin/python).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
VERSION=0.7.2
ORIG=sal_detectron2-${VERSION}-cp310-none-any.whl
SHA256=491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561
DEPS=(fvcore iopath "pycocotools>=2.0.2" "omegaconf>=2.1,<2.4" "hydra-core>=1.1"
      "yacs>=0.1.8" "termcolor>=1.1" tabulate cloudpickle tensorboard matplotlib black
      packaging "Pillow>=7.1" "tqdm>4.29.0" numpy "setuptools<81")

if [ "${FORCE:-0}" != 1 ] && "$PYTHON" -c "import detectron2, fvcore, pycocotools, pkg_resources" 2>/dev/null; then
    echo "detectron2 already installed: $("$PYTHON" -W ignore -c 'import detectron2; print(detectron2.__version__, detectron2.__file__)')"
    exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export SOURCE_DATE_EPOCH=1732838400  # fixed zip timestamps for the repacked wheel

"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.10 \
    "sal-detectron2==${VERSION}" -d "$WORK"
echo "${SHA256}  $WORK/$ORIG" | sha256sum -c -

"$PYTHON" -m pip install --quiet "wheel>=0.40"
"$PYTHON" -m wheel unpack -d "$WORK/src" "$WORK/$ORIG"
PKG="$WORK/src/sal_detectron2-${VERSION}"
INFO="$PKG/sal_detectron2-${VERSION}.dist-info"
rm -f "$PKG"/detectron2/_C.*.so
sed -i 's/^Requires-Dist: numpy<2$/Requires-Dist: numpy/' "$INFO/METADATA"
sed -i -e 's/^Tag: .*/Tag: py3-none-any/' -e 's/^Root-Is-Purelib: .*/Root-Is-Purelib: true/' \
    "$INFO/WHEEL"
mkdir -p "$WORK/dist"
"$PYTHON" -m wheel pack --local-version purepy -d "$WORK/dist" "$PKG"

"$PYTHON" -m pip install "${DEPS[@]}"
"$PYTHON" -m pip install --no-deps --force-reinstall \
    "$WORK/dist/sal_detectron2-${VERSION}+purepy-py3-none-any.whl"
"$PYTHON" -W ignore -c "import detectron2, detectron2.engine, detectron2.evaluation; print('detectron2', detectron2.__version__, 'installed at', detectron2.__file__)"
