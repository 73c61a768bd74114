# faceq: `make demo` runs a real audit job end to end; `make test` runs the test suite.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# CPU wheels by default; on a GPU host: make install TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install demo test worker flower bench bench-precision clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch alone first, from the chosen index, so nothing later pulls a multi-GB CUDA build;
	# its dependencies come from PyPI with the rest
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q --no-deps --retries 1 --timeout 15 \
		"torch==$(TORCH_VERSION)" --index-url $(TORCH_INDEX) || $(PY) -m pip install -q --no-deps "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m producer.demo

test: install
	$(PY) -m pytest -q --durations=15

worker: install
	$(PY) -m workers --device $${FACEQ_DEVICE:-cpu}

# Flower is never served without credentials, and only on loopback unless FLOWER_ADDRESS says otherwise
flower: install
	@test -n "$$FLOWER_BASIC_AUTH" || { echo "error: set FLOWER_BASIC_AUTH=user:password first" >&2; exit 2; }
	$(VENV)/bin/celery -A workers.app flower --address=$${FLOWER_ADDRESS:-127.0.0.1} --port=$${FLOWER_PORT:-5555}

bench: install
	$(PY) -m bench --record

bench-precision: install
	$(PY) -m bench.precision --record

clean:
	rm -rf $(VENV) .pytest_cache demo-output
