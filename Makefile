# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

# constraints.txt holds torch to the machines' CPU wheel (README "Development")
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# the tests also run fedbridge on Flower (real SuperLink/SuperNode processes), [privacy] (dp-accounting), Parquet tables and TensorBoard files: `make test` adds those extras
$(VENV)/.flower: $(VENV)/.installed
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,flower,privacy,parquet,tensorboard]'
	touch $@

.PHONY: install demo test
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/fedbridge run configs/seed.toml --seeds 3 --set data.fallback=digits

# the layering of docs/DESIGN.md first (import-linter's contract in pyproject.toml), then the tests
test: $(VENV)/.installed $(VENV)/.flower
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q
