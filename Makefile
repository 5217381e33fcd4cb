# Keyward developer commands. Everything installs into .venv from requirements.lock.
#   make run    - the portal on the embedded default (SQLite, in-process tasks, demo data)
#   make test   - the whole suite: lint, SQLite, PostgreSQL + Redis + Celery worker, Chromium
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install run test test-sqlite lint format lock bench clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

run: $(STAMP)
	$(BIN)/flask --app wsgi db upgrade
	$(BIN)/flask --app wsgi seed-demo
	@echo "Keyward is serving on http://127.0.0.1:5000 (Ctrl+C stops it)"
	# One process with threads: the embedded default keeps rate-limit counters in memory.
	$(BIN)/gunicorn --bind 127.0.0.1:5000 --workers 1 --threads 8 --access-logfile - wsgi:app

test: $(STAMP)
	scripts/test

test-sqlite: $(STAMP)
	scripts/ensure-saml-deps
	npm ci --prefix tests/e2e/idp --ignore-scripts --no-audit --no-fund --loglevel=error
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -e '.[test]'
	{ echo '# Exact versions installed on every machine (pip install -c requirements.lock -e ".[test]").'; \
	  echo '# Regenerate with: make lock'; \
	  .lock-venv/bin/pip freeze --exclude-editable | sort; } > requirements.lock
	rm -rf .lock-venv

bench: $(STAMP)
	$(BIN)/python bench/password_login.py

clean:
	rm -rf $(VENV) instance .pytest_cache .ruff_cache
