# crdtcoord developer commands. Every target bootstraps .venv itself (python3 -m venv + pip).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench bench-quick clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## make demo: three `crdtcoord serve` processes converge over HTTP; one is killed -9 and restarted
demo: $(STAMP)
	$(PY) -m crdtcoord demo

## make test: lint + mypy --strict + the whole pytest suite (what CI runs)
test: lint typecheck pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(PY) -m pytest

## make bench: every benchmark, JSON results in benchmarks/results/
bench: $(STAMP)
	@mkdir -p benchmarks/results
	$(PY) benchmarks/kernel.py --json benchmarks/results/kernel.json
	$(PY) benchmarks/engine.py --json benchmarks/results/engine.json
	$(PY) benchmarks/sim.py --json benchmarks/results/sim.json
	@command -v redis-server >/dev/null || { echo "installing redis-server (the baseline of benchmarks/http.py)"; \
	  sudo -n apt-get install -y redis-server || apt-get install -y redis-server || \
	  { (sudo -n apt-get update || apt-get update) && (sudo -n apt-get install -y redis-server || apt-get install -y redis-server); }; } \
	  || echo "could not install redis-server: benchmarks/http.py reports its Redis baseline as unavailable"
	$(PY) benchmarks/http.py --json benchmarks/results/http.json
	$(PY) benchmarks/coordination.py --json benchmarks/results/coordination.json
	$(PY) benchmarks/documents.py --json benchmarks/results/documents.json

bench-quick: $(STAMP)
	$(PY) benchmarks/kernel.py --quick
	$(PY) benchmarks/engine.py --quick
	$(PY) benchmarks/sim.py --quick
	$(PY) benchmarks/http.py --quick
	$(PY) benchmarks/coordination.py --quick
	$(PY) benchmarks/documents.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info
