# The two commands a newcomer types: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARCHIVE ?= $(if $(wildcard data/mill.mat),data/mill.mat,data/synthetic-mill.mat)
DEMO_DIR := runs/demo

.PHONY: install test test-fast demo bench clean

install: $(STAMP) debian-packages

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[training,test]'
	touch $(STAMP)

# Debian packages the tests need (a real Mosquitto broker), installed only when missing.
debian-packages:
	@if ! command -v mosquitto >/dev/null 2>&1 && ! test -x /usr/sbin/mosquitto; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing Debian package mosquitto (the tests start their own broker)"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq mosquitto mosquitto-clients; \
	fi

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

data/synthetic-mill.mat: | $(STAMP)
	$(PY) -m training synth --out $@

# Until the daemon demo lands: synthesise (unless data/mill.mat exists), train a quick model, evaluate it.
demo: install $(ARCHIVE)
	$(PY) -m training fit --archive $(ARCHIVE) --out $(DEMO_DIR)/bundle --quick
	$(PY) -m training evaluate --bundle $(DEMO_DIR)/bundle --archive $(ARCHIVE) --out $(DEMO_DIR)/eval

bench: install
	$(PY) -m tests.bench_windowing

clean:
	rm -rf $(VENV) runs build *.egg-info
