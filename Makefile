# The two commands a newcomer types: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARCHIVE ?= $(if $(wildcard data/mill.mat),data/mill.mat,data/synthetic-mill.mat)
DEMO_DIR := runs/demo
BUNDLE  := $(DEMO_DIR)/bundle

.PHONY: install debian-packages sparkplug-decoder node-red test test-fast demo demo-bundle evaluate-demo bench bench-windowing clean

install: $(STAMP) debian-packages sparkplug-decoder node-red

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[training,serve,replay,test]'
	touch $(STAMP)

# Debian packages the tests need, installed only when missing: a real Mosquitto broker and its
# tools (mosquitto_passwd for the broker users), openssl (the test CA), systemd-analyze (the unit
# file checks; the package does not make systemd PID 1). Pairs of command:package.
DEBIAN_NEEDS := mosquitto:mosquitto mosquitto_passwd:mosquitto mosquitto_pub:mosquitto-clients \
                openssl:openssl systemd-analyze:systemd node:nodejs npm:npm
debian-packages:
	@missing=; for need in $(DEBIAN_NEEDS); do cmd=$${need%%:*}; \
	  command -v $$cmd >/dev/null 2>&1 || test -x /usr/sbin/$$cmd || missing="$$missing $${need#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  missing=$$(printf '%s\n' $$missing | sort -u | tr '\n' ' '); \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing Debian packages $$missing(the tests start their own broker and check the unit file)"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# The Sparkplug tests' independent decoder: Eclipse Tahu's JavaScript codec, pinned by its lock file
# (tests/sparkplug_decoder). Installed again only when the lock file changes.
DECODER := tests/sparkplug_decoder
sparkplug-decoder: $(DECODER)/node_modules/.installed
$(DECODER)/node_modules/.installed: $(DECODER)/package-lock.json | debian-packages
	npm ci --prefix $(DECODER) --no-audit --no-fund --loglevel=error
	touch $@

# Node-RED 4.1 (the last line for Node 20), headless in tests/test_node_red.py with the shipped
# dashboard flow deploy/node-red/. Pinned by its lock file; installed again only when it changes.
NODE_RED := tests/node_red
node-red: $(NODE_RED)/node_modules/.installed
$(NODE_RED)/node_modules/.installed: $(NODE_RED)/package-lock.json | debian-packages
	npm ci --prefix $(NODE_RED) --no-audit --no-fund --loglevel=error
	touch $@

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

data/synthetic-mill.mat: | $(STAMP)
	$(PY) -m training synth --out $@

# The whole product on this machine: the real archive when data/mill.mat exists, else the synthetic
# one; a quick model unless one was trained already; a local broker with the deploy configuration,
# the monitor, 4 replayed machines and a live dashboard. Everything started is stopped at the end.
demo: install $(ARCHIVE)
	$(PY) -m training demo-bundle --archive $(ARCHIVE) --out $(BUNDLE)
	$(PY) deploy/demo.py --archive $(ARCHIVE) --bundle $(BUNDLE)

# The bundle the demo ships (deploy/demo-bundle/, used for the synthetic archive) trained again:
# after a change to the model, the training or the scoring graph (tests/test_demo_bundle.py says
# when). 3-7 minutes on 2 cores.
demo-bundle: install data/synthetic-mill.mat
	$(PY) -m training fit --archive data/synthetic-mill.mat --out deploy/demo-bundle --quick

# Metrics and plots of the demo model (runs/demo/eval/).
evaluate-demo: install $(ARCHIVE)
	$(PY) -m training demo-bundle --archive $(ARCHIVE) --out $(BUNDLE)
	$(PY) -m training evaluate --bundle $(BUNDLE) --archive $(ARCHIVE) --out $(DEMO_DIR)/eval

# Throughput of the daemon on this box (runs/bench/bench.json and bench-scaling.png): its own broker,
# the model's scoring call, the broker's fan-in, the daemon at 25/50/100 machines in 64-sample
# chunks in real time and at 100 as fast as possible; then (runs/bench-frames/) 100/300/1000
# machines in 250-sample frames; then (runs/bench-inputs/) 100 machines sending JSON chunks, f32
# frames of 64 and of 250 samples, in one run for their ratios. Fails when a window is lost or
# duplicated (the plots are drawn anyway).
bench: install $(ARCHIVE)
	$(PY) -m training demo-bundle --archive $(ARCHIVE) --out $(BUNDLE)
	$(PY) -m edge_monitor bench --bundle $(BUNDLE) --archive $(ARCHIVE) --out runs/bench; status=$$?; \
	  test ! -f runs/bench/bench.json || $(PY) -m training plot-bench runs/bench/bench.json; \
	$(PY) -m edge_monitor bench --bundle $(BUNDLE) --archive $(ARCHIVE) --out runs/bench-frames --skip-model \
	  --inputs frames:250 --encoding f32 --machines 100,300,1000; status2=$$?; \
	  test ! -f runs/bench-frames/bench.json || $(PY) -m training plot-bench runs/bench-frames/bench.json; \
	$(PY) -m edge_monitor bench --bundle $(BUNDLE) --archive $(ARCHIVE) --out runs/bench-inputs --skip-model \
	  --skip-fanin --inputs chunks:64:json,frames:64:f32,frames:250:f32 --machines 100; status3=$$?; \
	  test $$status = 0 && test $$status2 = 0 && test $$status3 = 0

# Preparing every window of the archive, offline and incrementally.
bench-windowing: install
	$(PY) -m tests.bench_windowing

clean:
	rm -rf $(VENV) runs build *.egg-info
