# make run: the dashboard on the embedded defaults with simulated meters.
# make test: the whole suite against real servers (private mosquitto, influxd, moto S3,
#            a fresh database on the local PostgreSQL).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: run test lint bench clean

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

run: $(INSTALLED)
	scripts/system-deps.sh run
	$(VENV)/bin/iotmeter

test: $(INSTALLED)
	scripts/system-deps.sh test
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(VENV)/bin/ruff check iotmeter_tui testsupport tests bench
	$(VENV)/bin/mypy iotmeter_tui testsupport

bench: $(INSTALLED)
	scripts/system-deps.sh test
	for b in protocol stores ingest simulator dashboard anomaly pipeline; do $(PY) bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench/results
