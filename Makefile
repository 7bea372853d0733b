# The two commands of the README. Each sets itself up from nothing (scripts/setup).
.PHONY: demo test lint docs clean

ARGS ?=

demo:  ## run the demo: a live user directory at http://127.0.0.1:8888/
	@scripts/setup demo
	.venv/bin/python -m example_app $(ARGS)

test:  ## lint, type-check, build the docs and run every test (warnings are errors)
	@scripts/setup test
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/mkdocs build --strict --site-dir .tmp/site
	.venv/bin/pytest $(ARGS)

clean:
	rm -rf .venv .venv-mongo .tmp site .pytest_cache .mypy_cache .ruff_cache
