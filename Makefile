# mmseq: `make quickstart` sets everything up and runs the main job; `make test` sets up and runs the tests.
# The first call creates .venv (about 2 minutes, ~5 GB); later calls reuse it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mmseq-installed
# Debian packages features need at run time (installed by `make system-deps` when missing).
# Speech synthesizers for `mmseq data make keywords` (espeak-ng, flite, festival and three festival voices).
DEBIAN_PACKAGES ?= espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts

.PHONY: setup system-deps quickstart test test-all lint clean-venv

setup: $(STAMP) system-deps

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# The main job on built-in data: train a small model from config on the CPU and print its accuracy.
QUICKSTART_RUN := runs/quickstart-$(shell date +%Y%m%d-%H%M%S)
quickstart: setup
	$(VENV)/bin/mmseq info
	$(VENV)/bin/mmseq train configs/synthetic/mqar_attention.yaml --run-dir $(QUICKSTART_RUN)
	$(VENV)/bin/mmseq eval $(QUICKSTART_RUN)

lint: setup
	$(VENV)/bin/ruff check .

# Default test run (slow tests excluded); `make test-all` includes them.
test: lint
	$(PY) -m pytest -q

test-all: lint
	$(PY) -m pytest -q -m ""

clean-venv:
	rm -rf $(VENV)
