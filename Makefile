# radsearch task runner. `make demo` and `make test` are the two set-up commands (README).
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
SERVE  ?= 1
# Two pytest-xdist workers, one test file each at a time (a file's fixtures are set up once): the
# suite took 12.4 min this way on 2 cores (Zen 3), 18.1 serially without its Orthanc tests.
# PYTEST_ARGS= runs it serially.
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: install lock demo test lint format typecheck bench bench-quick bench-peers-install check clean

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch from this machine's disk (pip, not uv: uv would download a CUDA build)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	# The rest at the versions the lock names (torch and its CUDA wheels at those just installed),
	# then the project itself without resolving anything again.
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

install: $(VENV)/.installed

# Rewrites requirements.lock from pyproject's dependencies and dev extra; pins already there stay
# unless pyproject rules them out (pass LOCK_ARGS=--upgrade to move everything to the newest).
LOCK_ARGS ?=
lock: install
	$(BIN)/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links --extra dev \
		$(LOCK_ARGS) --output-file requirements.lock pyproject.toml

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
	$(BIN)/mypy core evaluation ingest workers search_api radsearch

# Static checks only (.ci/run runs them before the tests; .pre-commit-config.yaml runs the same tools).
check: lint typecheck

# Issues 6 and 18: each benchmark exits non-zero on a missed target, all of them run (JSON lines).
# Results and the machine they were measured on: bench/RESULTS.md. In order: a 1 M collection
# without quantization (reported only: its RSS is asked for beside the int8 one); the default
# collection (int8, originals in RAM: the latency, speed-up, build and combined-filter targets,
# then serving: HTTP against the engine alone, and the peers (faiss, hnswlib, usearch) on the same
# data, radsearch's row from that collection); the memory target's collection (int8, originals on
# disk: recall, then 10,000 distinct queries under the API's compose memory ceiling); ingest; the
# start-up of the light CLI commands.
bench: install bench-peers-install
	fail=0; dir=$$(mktemp -d /tmp/radsearch-bench-1m.XXXXXX); \
	$(PY) bench/search.py --n 1000000 --quantization none --rss --no-check; \
	$(PY) bench/search.py --n 1000000 --rss --keep-data-dir $$dir/data || fail=1; \
	$(PY) bench/http_search.py --n 1000000 --data-dir $$dir/data || fail=1; \
	$(PY) bench/peers.py --n 1000000 --radsearch-data-dir $$dir/data || fail=1; \
	rm -rf $$dir; \
	$(PY) bench/search.py --n 1000000 --quantization int8 --on-disk --rss --long-run 10000 --memory-limit-mb 2048 || fail=1; \
	$(PY) bench/ingest.py --n 1000 --encoder baseline --source local || fail=1; \
	$(PY) bench/ingest.py --n 1000 --encoder baseline --source s3 || fail=1; \
	$(PY) bench/ingest.py --n 256 --encoder clip-vit-b16 --source s3 || fail=1; \
	$(PY) bench/cli_startup.py || fail=1; \
	exit $$fail

# The same checks at small sizes (a few minutes); the 1 M-only targets (speed-up, build time,
# RSS, the peer ratios) are reported, not checked.
bench-quick: install bench-peers-install
	fail=0; \
	$(PY) bench/search.py --quick --rss || fail=1; \
	$(PY) bench/search.py --quick --quantization int8 --on-disk --rss --long-run 2000 --memory-limit-mb 2048 || fail=1; \
	$(PY) bench/http_search.py --quick || fail=1; \
	$(PY) bench/peers.py --n 20000 --queries 100 --no-check || fail=1; \
	$(PY) bench/ingest.py --quick --encoder baseline --source local || fail=1; \
	$(PY) bench/ingest.py --quick --encoder clip-vit-b16 --source s3 || fail=1; \
	$(PY) bench/cli_startup.py --quick || fail=1; \
	exit $$fail

# The peers bench/peers.py compares radsearch with (faiss, hnswlib, usearch); the versions mirror
# pyproject's `bench` extra.
bench-peers-install: install
	$(PY) -m pip install --quiet faiss-cpu==1.15.1 hnswlib==0.8.0 usearch==2.26.6

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
