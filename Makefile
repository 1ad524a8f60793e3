# The two commands: `make run` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export FLASK_APP := app

.PHONY: run test test-unit test-postgres test-browser lint format bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.installed

## run: set up, migrate SQLite, create demo accounts, serve on http://127.0.0.1:5000
## with the sweeper beside it; Ctrl-C stops both
run: $(VENV)/.installed
	$(BIN)/flask db upgrade
	$(BIN)/flask soma demo
	@$(BIN)/flask soma sweep --every 10 & sweeper=$$!; \
	trap 'kill $$sweeper 2>/dev/null; wait $$sweeper 2>/dev/null' EXIT INT TERM; \
	$(BIN)/flask run --host 127.0.0.1 --port 5000

## test: set up and run every suite (unit, PostgreSQL, browser), one worker per core and
## one more, TEST_WORKERS to choose (each worker has its own PostgreSQL database; a file's
## tests stay on one worker). The tests wait on PostgreSQL and Chromium for about a third
## of their time: on 2 cores, 3 workers took 8 minutes 20 where 2 took 9 minutes 43.
## Files are handed out in the order they are collected (browser, postgres, unit), the
## long ones first, not sorted by how many tests they hold: that sort left the longest
## files of few tests (the PostgreSQL fuzz, 200 s on a slow machine; the browser files)
## for last, each alone on one worker at the end.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc 2>/dev/null || echo 1) + 1 )))
test: $(VENV)/.installed-dev
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-unit: $(VENV)/.installed-dev
	$(BIN)/pytest tests/unit

# every test's PostgreSQL half, tests/postgres/ included
test-postgres: $(VENV)/.installed-dev
	$(BIN)/pytest -m postgres

test-browser: $(VENV)/.installed-dev
	$(BIN)/pytest tests/browser

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## bench: run every bench/*.py in turn on PostgreSQL (SOMA_BENCH_POSTGRES_URL); each table
## is headed by the file that prints it; the big databases are kept between runs (built
## when missing: the 10M-entry ledger of admin.py and earnings.py, bench/_big.py, first).
## The two on that ledger run one after the other, while its pages are still in memory
## (after the audit's 4M entries, earnings' first view read them from disk: 57 s, not 2)
SHARED_FIRST := bench/admin.py bench/earnings.py
BENCHES := $(SHARED_FIRST) $(filter-out $(SHARED_FIRST),$(sort $(wildcard bench/[!_]*.py)))
bench: $(VENV)/.installed-dev
	@started=$$(date +%s); times=""; \
	for f in $(BENCHES); do \
		echo; echo "=== $$f: $$(head -1 $$f | sed 's/^\"\"\"//')"; \
		began=$$(date +%s); \
		$(BIN)/python $$f || exit 1; \
		times="$$times $$(basename $$f .py) $$(( $$(date +%s) - began )) s,"; \
	done; \
	echo; echo "make bench$${BENCH_QUICK:+-quick}: every bench in $$(( $$(date +%s) - started )) s:$${times%,}"

## bench-quick: the same, each bench one short round on small data (BENCH_QUICK=1): it
## shows every table runs; its figures are not the bench's
bench-quick: $(VENV)/.installed-dev
	@BENCH_QUICK=1 $(MAKE) --no-print-directory bench

clean:
	rm -rf $(VENV) .pytest_cache test-results
