# Two commands for a new user: `make demo` and `make test`. Both create .venv when missing
# (installed with uv, bootstrapped from PyPI; pip when uv cannot be had).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test lint bench clean

# INSTALLER=pip installs everything with pip (the fallback; also what uv is timed against).
INSTALLER ?= uv
TORCH_PIN := $(VENV)/torch-pin.txt

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned, with pip: pip takes the CPU build from this machine's disk
	# (its find-links); uv does not read pip's settings and would pick PyPI's CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -c 'from importlib.metadata import version; print("torch==" + version("torch"))' > $(TORCH_PIN)
	# the rest with uv (installed from PyPI when missing), held to the installed torch by
	# the constraint; pip when uv cannot be installed or fails
	if [ "$(INSTALLER)" = uv ] && { test -x $(VENV)/bin/uv || $(PY) -m pip install --quiet uv; }; then \
		$(VENV)/bin/uv pip install --quiet --python $(PY) --constraint $(TORCH_PIN) -e '.[dev]' \
		|| $(PY) -m pip install --quiet -e '.[dev]'; \
	else \
		$(PY) -m pip install --quiet -e '.[dev]'; \
	fi
	$(PY) -c 'from importlib.metadata import version; print("torch==" + version("torch"))' | cmp -s - $(TORCH_PIN)
	touch $(STAMP)

install: $(STAMP)

# the demo sizes itself to finish in --budget seconds (default 300; README "What the demo's time
# depends on"); make demo DEMO_ARGS="--products 20000" for the full catalog
DEMO_ARGS ?=
demo: $(STAMP)
	$(PY) -m scripts.demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) -m scripts.benchmark

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
