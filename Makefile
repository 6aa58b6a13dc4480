# beam_zdl — every target sets up what it needs: a .venv, the Java jars (Maven,
# cached in .cache/), the Prism binary. Reruns reuse the caches.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
CACHE   := $(CURDIR)/.cache
export BEAM_ZDL_CACHE := $(CACHE)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
PYTEST_ARGS ?=
# `make bench SCALE_ARGS=--quick`: the scale series (bench/scale.py) at 1M records only
SCALE_ARGS ?=

.PHONY: setup jars prism flink-jar test test-all demo bench protos dist docs clean check-tools

check-tools:
	@command -v java >/dev/null || { echo "error: java not found. beam_zdl's tests run real Kafka and HDFS from their jars: install a JDK 17 (apt-get install openjdk-17-jdk-headless)." >&2; exit 1; }
	@command -v mvn >/dev/null || { echo "error: mvn not found. Maven resolves the Kafka/Hadoop jars: install Maven 3.8+ (apt-get install maven)." >&2; exit 1; }

# __init__.py holds the version, which the installed metadata copies
$(BIN)/.installed: pyproject.toml beam_zdl/__init__.py
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench,docs]'
	@touch $@

setup: check-tools $(BIN)/.installed jars

jars: $(BIN)/.installed check-tools
	$(BIN)/python -c 'import sys; from beam_zdl.testing.jars import main; sys.exit(main())'

# Prism (Beam's portable local runner) for streaming tests, built from the Beam Go
# module of the installed Beam version (it cannot be downloaded at run time).
# Go's module and build caches live in .cache/go, so a rebuild is instant.
GO_ENV := GOBIN=$(CACHE)/bin GOMODCACHE=$(CACHE)/go/mod GOCACHE=$(CACHE)/go/build \
          GOFLAGS="-modcacherw -buildvcs=false"
prism: $(CACHE)/bin/prism

$(CACHE)/bin/prism: | $(BIN)/.installed
	@command -v go >/dev/null || { echo "error: go not found. It builds Prism, the runner of the streaming tests: install Go 1.24+." >&2; exit 1; }
	$(GO_ENV) go install github.com/apache/beam/sdks/v2/go/cmd/prism@v$$($(BIN)/python -c 'import apache_beam as b; print(b.__version__)' 2>/dev/null)

# Beam's Flink job server (jars resolved with Maven; see beam_zdl/testing/flink.py). The
# same jars run LocalFlink's session cluster (beam_zdl/testing/flink_cluster.py).
flink-jar: $(BIN)/.installed check-tools
	$(BIN)/python -m beam_zdl.testing.flink

# Fast suite: a real subset of every kind of test (slow chaos/runner variants excluded).
# pytest exits 5 when nothing ran; make treats that, like any non-zero exit, as failure.
test: setup prism flink-jar
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: setup prism flink-jar
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: setup
	$(BIN)/python examples/demo.py

bench: setup
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.scale $(SCALE_ARGS)

# Regenerate beam_zdl/v1/*_pb2.py(i) from protos/ (tests/test_protos.py checks they match).
protos: $(BIN)/.installed
	$(BIN)/python scripts/gen_protos.py

# The sdist and the wheel in dist/ (README's install line: pip install dist/beam_zdl-*.whl).
# The wheel is built from the sdist; both carry the generated beam_zdl/v1/*_pb2.py, so
# building needs no protoc. tests/test_wheel.py builds the same way and installs the wheel.
dist: $(BIN)/.installed
	rm -rf dist
	$(BIN)/python -m build --outdir dist .

# The docs site (docs/, mkdocs.yml) into site/; --strict fails on a broken link or a
# warning. The options reference and the performance tables are generated at build time
# (scripts/docs_hooks.py). tests/test_docs.py runs the same build in `make test`.
docs: $(BIN)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) $(CACHE) .pytest_cache .hypothesis dist site
