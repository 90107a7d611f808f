# mmseq: `make quickstart` sets everything up and runs the main job; `make test` sets up and runs the tests.
# The first call creates .venv (about 2 minutes, ~5 GB); later calls reuse it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mmseq-installed
# Debian packages features need at run time (installed by `make system-deps` when missing).
# Speech synthesizers for `mmseq data make keywords` (espeak-ng, flite, festival and three festival voices);
# chromium for the demos' browser test (tests/apps), driven by Playwright without any browser download;
# g++ for the compiled CPU kernels (kernels/csrc, built at first use; without it the PyTorch paths run).
DEBIAN_PACKAGES ?= espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts chromium g++

.PHONY: setup system-deps quickstart quickstart-mqar test test-all lint gpu-check clean-venv

setup: $(STAMP) system-deps

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[dev,apps]'
	touch $(STAMP)

system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# The main job on built-in data: synthesize the SC10 keyword set, train a small keyword classifier from
# config on the CPU, evaluate it on the unseen-voice test split, and classify clips it has never heard.
QUICKSTART_RUN := runs/quickstart-$(shell date +%Y%m%d-%H%M%S)
QUICKSTART_DATA := data/keywords_sc10
quickstart: setup
	$(VENV)/bin/mmseq info
	test -f $(QUICKSTART_DATA)/testing_list.txt || \
		$(VENV)/bin/mmseq data make keywords $(QUICKSTART_DATA) --words sc10 --per-word 100
	$(VENV)/bin/mmseq train configs/audio/keywords_quickstart.yaml --run-dir $(QUICKSTART_RUN)
	$(VENV)/bin/mmseq eval $(QUICKSTART_RUN)
	$(VENV)/bin/mmseq classify-audio --checkpoint $(QUICKSTART_RUN) \
		$$(sed -n '1p;40p;80p' $(QUICKSTART_DATA)/testing_list.txt | sed 's|^|$(QUICKSTART_DATA)/|')
	$(VENV)/bin/mmseq classify-audio $$(sed -n '1p;40p;80p' $(QUICKSTART_DATA)/testing_list.txt | sed 's|^|$(QUICKSTART_DATA)/|')

# The first main job: multi-query associative recall with a 2-layer attention model (about a minute).
QUICKSTART_MQAR_RUN := runs/quickstart-mqar-$(shell date +%Y%m%d-%H%M%S)
quickstart-mqar: setup
	$(VENV)/bin/mmseq train configs/synthetic/mqar_attention.yaml --run-dir $(QUICKSTART_MQAR_RUN)
	$(VENV)/bin/mmseq eval $(QUICKSTART_MQAR_RUN)

lint: setup
	$(VENV)/bin/ruff check .

# Default test run (slow tests excluded); `make test-all` includes them. Tests run in TEST_WORKERS processes
# (pytest-xdist; one torch thread each, see tests/conftest.py): `make test TEST_WORKERS=0` runs them in one.
TEST_WORKERS ?= 2
test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS)

test-all: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m ""

# On one CUDA GPU, in under 8 minutes: the Triton/GPU tests compiled, every kernel against the torch path and its
# peers, one short training run per task, mixer time and memory vs L. Writes gpu_check.md and gpu_check.json
# into benchmarks/gpu_check_out/. Flags go through ARGS: make gpu-check ARGS="--dry-run --out DIR" rehearses it
# on the CPU. Needs only the venv (no system packages).
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
