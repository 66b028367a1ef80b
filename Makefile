# jaxweights: `make demo` and `make test` are all the set-up a fresh machine needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test test-slow lint docs bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

## Run every experiment's quick config and the demo-size cost curves; write results/REPORT.md.
demo: $(STAMP)
	$(PY) -m experiments.run_all --config quick --out results

## Lint and format check, then the fast test suite with the library's docstring
## examples (slow end-to-end runs are marked and excluded).
test: lint
	$(PY) -m pytest -q -n 2 --dist loadfile

## ruff: lint and format check (`ruff format .` fixes the format).
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

## The documentation site, built offline into site/.
docs: $(STAMP)
	$(PY) -m mkdocs build --strict

## Only the slow end-to-end tests (quick experiment configs, multi-process runs).
test-slow: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m slow

## Compiled-step benchmarks, as ratios against the plain step in the same process.
bench: $(STAMP)
	XLA_FLAGS="$${XLA_FLAGS:---xla_force_host_platform_device_count=8}" $(PY) -m benchmarks --json bench_results/bench.json --md bench_results/bench.md

clean:
	rm -rf $(VENV) results bench_results site .pytest_cache
