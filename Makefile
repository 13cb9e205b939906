# radsearch task runner. `make demo` and `make test` are the two set-up commands (README).
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
SERVE  ?= 1
PYTEST_ARGS ?=

.PHONY: install demo test lint format typecheck bench bench-quick check clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch from this machine's disk (pip, not uv: uv would download a CUDA build)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/radsearch demo $(if $(filter 0,$(SERVE)),--no-serve,)

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install
	$(BIN)/mypy core ingest workers search_api radsearch

check: lint typecheck test

bench: install
	$(PY) bench/search.py --n 100000 --dim 512
	$(PY) bench/ingest.py --n 200 --encoder baseline --source local
	$(PY) bench/ingest.py --n 200 --encoder clip-vit-b16 --source local

bench-quick: install
	$(PY) bench/search.py --quick
	$(PY) bench/ingest.py --quick --encoder baseline --source local

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
