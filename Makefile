# ftproxy: `make test` runs the test suite, `make demo` runs the front-proxy example.
# Both create .venv (CPython 3.13) on first use and install the project into it (editable,
# with the test extras); later runs skip the install until pyproject.toml changes.
# `make test PYTHON=python3.14t` creates .venv from that interpreter instead (any CPython
# >= 3.13, e.g. a free-threaded build); `make clean-venv` first to switch.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ftproxy-installed
PYENV_PYTHON_VERSION ?= 3.13.0
PYENV  ?= $(shell command -v pyenv 2>/dev/null || echo $(HOME)/.pyenv/bin/pyenv)

.PHONY: test demo install clean-venv

test: $(STAMP)
	$(PY) -m pytest tests

demo: $(STAMP)
	$(VENV)/bin/proxyctl demo

install: $(STAMP)

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

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

clean-venv:
	rm -rf $(VENV)
