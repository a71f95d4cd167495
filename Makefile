# Set-up, tests and the offline demo. `make test` and `make demo` run `make setup` first if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Every package's exact version, as the suite last passed with them (see `make lock`).
LOCK := requirements/lock.txt
UV_VERSION := 0.13.9

.PHONY: setup test demo lock clean slurm-deps

setup: $(VENV)/.installed slurm-deps

# Slurm + munge for tests/test_slurm.py (a real one-node cluster): apt-get install when root and
# missing; otherwise nothing (those tests then skip and say why).
slurm-deps:
	@bash slurm/cluster.sh install

# The lock is a constraints file: it fixes versions, not builds, so pip still picks the torch build
# the machine offers for the locked version: a local CPU wheel where one is offered (find-links, or
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu), else PyPI's (CUDA on Linux).
$(VENV)/.installed: pyproject.toml $(LOCK)
	@echo "make setup: creating $(VENV) and installing the locked versions of $(LOCK) (1-2 min; torch is the large one)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --constraint $(LOCK) -e ".[dev]"
	touch $@

# Refresh the lock: the newest releases allowed by pyproject.toml and requirements/lock.in,
# resolved by uv once for every platform (Linux, macOS, CUDA or not) from Python 3.11 on, one
# version per package. Then `make test` installs and tests exactly those; commit both together.
lock: $(VENV)/.installed
	$(PY) -m pip install --quiet "uv==$(UV_VERSION)"
	$(VENV)/bin/uv pip compile pyproject.toml requirements/lock.in --extra dev --universal \
		--fork-strategy fewest --python-version 3.11 --upgrade --quiet \
		--custom-compile-command "make lock" --output-file $(LOCK)

test: setup
	$(PY) -m pytest -q

demo: setup
	PYTHON=$(PY) bash scripts/demo.sh

clean:
	rm -rf $(VENV) .pytest_cache
