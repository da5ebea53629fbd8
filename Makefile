# One command sets everything up on a fresh machine: `make demo`; the tests: `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean example

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	mkdir -p out
	$(BIN)/prunecli prune examples/digits_cnn.keras --method magnitude --sparsity 0.5 \
		--data examples/digits.npz -o out/digits_cnn.pruned.keras --report out/demo-report.json

test: install
	TF_CPP_MIN_LOG_LEVEL=3 $(BIN)/python -m pytest -q

lint: install
	$(BIN)/python -m ruff check prunecli tests bench examples

bench: install
	$(BIN)/python bench/run.py --output bench/RESULTS.md

example: install
	$(BIN)/python examples/make_example.py

clean:
	rm -rf out .pytest_cache
