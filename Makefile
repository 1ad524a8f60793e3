# The two commands: `make run` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export FLASK_APP := app

.PHONY: run test test-unit test-postgres test-browser lint format bench clean

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

## test: set up and run every suite (unit, PostgreSQL, browser), one worker per core
## (each worker has its own PostgreSQL database; a file's tests stay on one worker)
test: $(VENV)/.installed-dev
	$(BIN)/pytest -n auto --dist loadfile

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

bench: $(VENV)/.installed-dev
	@for f in bench/[!_]*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache test-results
