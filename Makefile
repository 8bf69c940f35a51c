# Two commands do all the set-up on a fresh machine: `make train` and `make test`.
# Pass Hydra overrides to training with ARGS, e.g. `make train ARGS="logger=csv trainer.max_steps=100"`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install data train test test-full lint format clean

install: $(INSTALLED)

# Re-installs only when pyproject.toml changes; the stamp makes repeated calls free.
$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -c "import torch, torchvision; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5); print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

# The embedded dataset (synthetic shapes, VOC layout + COCO JSON) in data/shapes; built once.
data: install
	$(PY) -m dssd.data.shapes --out data/shapes

# The default CPU-sized experiment (see README); runs land in logs/train/runs/<time>.
train: data
	$(PY) src/train.py $(ARGS)

# Fast suite (slow tests excluded); `make test-full` runs everything.
test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-full: install
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

format: install
	$(VENV)/bin/ruff check --fix src tests
	$(VENV)/bin/ruff format src tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
