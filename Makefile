# Set-up, tests and the offline demo. `make test` and `make demo` run `make setup` first if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# On a machine without CUDA, take the CPU build of torch first so the project's `torch>=2.4`
# is already satisfied (otherwise pip pulls a multi-GB CUDA build).
TORCH_CPU ?= torch==2.13.0

.PHONY: setup test demo clean slurm-deps

setup: $(VENV)/.installed slurm-deps

# Slurm + munge for tests/test_slurm.py (a real one-node cluster): apt-get install when root and
# missing; otherwise nothing (those tests then skip and say why).
slurm-deps:
	@bash slurm/cluster.sh install

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		echo "CUDA found: installing torch from PyPI"; $(PY) -m pip install --quiet torch; \
	else \
		echo "no CUDA: installing the CPU build $(TORCH_CPU)"; $(PY) -m pip install --quiet "$(TORCH_CPU)"; \
	fi
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

test: setup
	$(PY) -m pytest -q

demo: setup
	PYTHON=$(PY) bash scripts/demo.sh

clean:
	rm -rf $(VENV) .pytest_cache
