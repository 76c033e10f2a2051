# Every target uses .venv/bin/python. `make install` is a no-op once the venv matches the
# requirement files (the stamp is newer than them).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo bench clean

install: $(STAMP)

$(STAMP): requirements/cpu.txt requirements/test.txt requirements/constraints.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade "pip==23.2.1"
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/cpu.txt -r requirements/test.txt -c requirements/constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(PY) -m pip check
	touch $(STAMP)

test: install
	$(PY) -m pytest -q tests

demo: install
	$(PY) tools/demo.py

bench: install
	$(PY) bench/merge_bench.py
	$(PY) bench/train_bench.py
	$(PY) bench/eval_bench.py
	$(PY) bench/sweep_bench.py

clean:
	rm -rf output .pytest_cache
