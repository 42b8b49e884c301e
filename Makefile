.PHONY: run test lint bench

# Run the portal (web + worker + beat) on http://127.0.0.1:8000/ ; Ctrl-C stops it.
run:
	bash scripts/run.sh

# Install and start what the tests need (PostgreSQL, Redis, Docker, base image), then pytest.
test:
	bash scripts/test.sh $(ARGS)

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
