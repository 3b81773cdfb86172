# Two commands on a fresh machine:  make demo  (the whole pipeline)  and  make test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint env data digits detectron2 tab1 clean

$(VENV)/.installed: pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -r requirements.txt -e .
	touch $@

env: $(VENV)/.installed

detectron2: env
	PYTHON=$(PY) bash detection/install_detectron2.sh

data: env
	$(PY) data/prepare_builtin.py

# scikit-learn's handwritten digits as an ImageFolder tree (data/digits), for the benchmark.
digits: env
	$(PY) data/prepare_digits.py

demo: data
	$(PY) -u tools/demo.py

# The Table 1 analogue (a benchmark: about 11 min per seed on 2 cores; tools/tab1_small.py --seeds 3).
tab1: data
	$(PY) -u tools/tab1_small.py

# One OpenMP thread per process: the tests start scripts as subprocesses, and
# more threads than the 2 cores of CI make OpenMP spin (10x slower).
# ruff: the formatter and the linter of pyproject.toml ([tool.ruff]); make test runs it first.
lint: env
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

# pytest-xdist workers from the CPUs (half of them, 2 to 8: most tests start
# scripts of one or two processes; TEST_WORKERS=1: one process, no xdist):
# each runs the scripts from its own copy of the repository (tests/conftest.py),
# and the tests of Reproduction.md's fixed-port commands share one worker.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(max(2, min(8, len(os.sched_getaffinity(0)) // 2)))" 2>/dev/null || echo 2)
test: lint detectron2
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q --durations=15 \
		$(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup)

clean:
	rm -rf runs results data/builtin data/digits
