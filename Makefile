# The two commands of the README. Each one builds .venv first if needed (scripts/setup_venv.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: demo test venv
venv:
	@bash scripts/setup_venv.sh $(VENV)

demo: venv
	$(PY) -m saxgpt_jax.demo --workdir=runs/demo

test: venv
	$(PY) -m pytest -q -n 2 tests
