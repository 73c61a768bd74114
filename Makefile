# faceq: `make demo` runs a real audit job end to end; `make test` runs the test suite.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# CPU wheels by default; on a GPU host: make install TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# Hashed locks (`make lock`): dev.lock is what `make install` and CI install, worker.lock what the
# Dockerfile and the wheelhouse install. torch is never locked: it is the host's (CUDA) build.
DEV_LOCK := requirements/dev.lock
WORKER_LOCK := requirements/worker.lock
NO_TORCH := requirements/torch-from-host.txt
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes --override $(NO_TORCH) --quiet
# `make test-lowest`: the suite at the lowest versions pyproject.toml allows (uv's lowest-direct)
LOWEST_VENV ?= .venv-lowest
# (less the fault, speed and reference-parity modules: they exercise no version-dependent code the rest does not;
# the client install test pins to dev.lock in both runs, and the placeholder demo runs repeat the end-to-end tests)
LOWEST_SKIP := chaos redis_restarts full_disk bench scale parity crop_pool hostile flower null_model datapath \
	client_install placeholders
LOWEST_TESTS ?= $(foreach module,$(LOWEST_SKIP),--ignore=tests/test_$(module).py)
# The suite on TEST_WORKERS pytest-xdist workers (most tests wait on worker processes, Redis and S3),
# then the tests marked `serial` alone (tests/conftest.py says how the work is split)
TEST_WORKERS ?= 4
define run_suite
	$(1) -m pytest -q -n $(TEST_WORKERS) -m "not serial" $(2)
	$(1) -m pytest -q -m serial $(2) || test $$? -eq 5  # 5: no serial test among those selected
endef
# `make wheelhouse`: every wheel a worker needs, for a GPU host without internet
PYTHON_VERSION ?= 3.12
PLATFORM ?= manylinux_2_28_x86_64
WHEELHOUSE ?= wheelhouse

.PHONY: install demo test test-lowest lock wheelhouse check-offline-install worker flower bench bench-gpu \
	bench-precision clean

# torch alone first, from the chosen index, so nothing later pulls a multi-GB CUDA build
define install_torch
	$(1) -c "import torch" 2>/dev/null || $(1) -m pip install -q --retries 1 --timeout 15 \
		"torch==$(TORCH_VERSION)" --index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple \
		|| $(1) -m pip install -q "torch==$(TORCH_VERSION)"
endef

$(VENV)/.installed: pyproject.toml $(DEV_LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(call install_torch,$(PY))
	# exactly what CI tested: every package pinned and hash-checked, then faceq itself
	$(PY) -m pip install -q --require-hashes --no-deps -r $(DEV_LOCK)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m devstack.demo

test: install
	$(call run_suite,$(PY),--durations=15)

# The suite (less LOWEST_SKIP) at the lowest versions pyproject.toml
# allows: uv resolves the lowest of every direct dependency (runtime and readers); the test
# tools resolve beside them. torch is the host's (see README "Supported versions").
test-lowest: install
	rm -rf $(LOWEST_VENV)
	$(PYTHON) -m venv $(LOWEST_VENV)
	$(call install_torch,$(LOWEST_VENV)/bin/python)
	$(VENV)/bin/uv pip compile pyproject.toml --extra worker --extra readers --resolution lowest-direct --python-version 3.11 \
		--override $(NO_TORCH) --quiet -o $(LOWEST_VENV)/lowest.txt
	$(VENV)/bin/uv pip install -q --python $(LOWEST_VENV)/bin/python -r $(LOWEST_VENV)/lowest.txt
	$(VENV)/bin/uv pip install -q --python $(LOWEST_VENV)/bin/python -e ".[dev]" -c $(LOWEST_VENV)/lowest.txt
	$(LOWEST_VENV)/bin/python -m pip check
	$(LOWEST_VENV)/bin/python -c "import pyarrow, numpy, celery, redis, polars; print('lowest:', *(f'{m.__name__} {m.__version__}' for m in (pyarrow, numpy, celery, redis, polars)))"
	$(call run_suite,$(LOWEST_VENV)/bin/python,--durations=10 $(LOWEST_TESTS))

# Refresh both locks to the newest versions pyproject.toml allows (needs the index)
lock:
	@test -x $(VENV)/bin/uv || { $(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q uv; }
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev $(LOCK_FLAGS) --upgrade -o $(DEV_LOCK)
	$(VENV)/bin/uv pip compile pyproject.toml --extra worker $(LOCK_FLAGS) --upgrade -o $(WORKER_LOCK)

# Every wheel a worker needs (worker.lock, hash-checked, for PYTHON_VERSION on PLATFORM) and
# faceq's own, in one folder to copy to a GPU host without internet (README "Offline install")
wheelhouse: install
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	$(PY) -m pip download -q --require-hashes --no-deps --only-binary=:all: --implementation cp \
		--python-version $(PYTHON_VERSION) $$($(PYTHON) ops/pip_platforms.py $(PLATFORM)) -r $(WORKER_LOCK) \
		-d $(WHEELHOUSE)
	$(PY) -m pip wheel -q --no-deps -w $(WHEELHOUSE) .
	cp $(WORKER_LOCK) $(WHEELHOUSE)/requirements.lock
	@echo "wrote $$(ls $(WHEELHOUSE)/*.whl | wc -l) wheels ($$(du -sh $(WHEELHOUSE) | cut -f1)) to $(WHEELHOUSE)/"

# The README's offline install, checked: a fresh venv with torch already in it (the host's),
# then faceq from the wheelhouse with the network cut (a network namespace of its own), then
# a real job through a worker installed that way
check-offline-install:
	$(MAKE) wheelhouse PYTHON_VERSION=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
	bash ops/check-offline-install.sh $(PYTHON) $(TORCH_VERSION) $(WHEELHOUSE)

worker: install
	$(PY) -m faceq.workers --device $${FACEQ_DEVICE:-cpu}

# Flower is never served without credentials, and only on loopback unless FLOWER_ADDRESS says otherwise
flower: install
	@test -n "$$FLOWER_BASIC_AUTH" || { echo "error: set FLOWER_BASIC_AUTH=user:password first" >&2; exit 2; }
	$(VENV)/bin/celery -A faceq.workers.app flower --address=$${FLOWER_ADDRESS:-127.0.0.1} --port=$${FLOWER_PORT:-5555}

bench: install
	$(PY) -m bench --record

# The GPU host's unattended smoke: exits non-zero when a job fails or stalls
bench-gpu: install
	$(PY) -m bench gpu --device $${FACEQ_DEVICE:-cuda:0} --record

bench-precision: install
	$(PY) -m bench.precision --record

clean:
	rm -rf $(VENV) $(LOWEST_VENV) $(WHEELHOUSE) .pytest_cache demo-output
