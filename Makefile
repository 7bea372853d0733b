# The two commands of the README, and the quick one. Each sets itself up from nothing
# (scripts/setup).
.PHONY: demo test check lint docs clean bench

ARGS ?=
# Coverage of tornado_live and example_app (branches; the demo's subprocesses included),
# reported by every `make test`. The floor (fail_under in pyproject.toml) holds for the full
# run only: with ARGS (a partial run, say `make test ARGS=tests/test_protocol.py`) it is 0.
COVERAGE = --cov --cov-report=term-missing:skip-covered $(if $(ARGS),--cov-fail-under=0)

demo:  ## run the demo: a live user directory at http://127.0.0.1:8888/
	@scripts/setup demo
	.venv/bin/python -m example_app $(ARGS)

test:  ## lint, type-check, build the docs and run every test (warnings are errors)
	@scripts/setup test
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/mkdocs build --strict --site-dir .tmp/site
	.venv/bin/pytest $(COVERAGE) $(ARGS)

check:  ## quick: lint, type-check, and the tests that need no Redis, MongoDB or browser
	@scripts/setup check
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/pytest -q -m "not redis and not mongo and not browser and not soak" $(ARGS)

bench:  ## the benchmark side by side with the peers (about 10 minutes; writes docs/benchmarks.md)
	@scripts/setup test
	.venv/bin/python benchmarks/bench.py $(ARGS)

clean:
	rm -rf .venv .venv-mongo benchmarks/.venv-peers benchmarks/node/node_modules .tmp site .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.*
