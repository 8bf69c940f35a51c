# Two commands do all the set-up on a fresh machine: `make train` and `make test`.
# Pass Hydra overrides to training with ARGS, e.g. `make train ARGS="logger=csv schedules.0.max_steps=200 'schedules.0.milestones=[136,172]' schedules.0.warmup_iters=18"`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=
# pytest-xdist workers of `make test` / `make test-full`: one per core, at most 4 (each builds the
# session fixtures it needs); PYTEST_WORKERS=0 runs the suite in one process
PYTEST_WORKERS ?= auto
PYTEST_XDIST := -n $(PYTEST_WORKERS) --maxprocesses=4 --dist loadfile
# `make ablation`: the setting (conf/ablation/), chosen by name or by DATA and MODEL_SIZE, and
# extra overrides for every row's src/train.py
DATA ?=
MODEL_SIZE ?= 321
ABLATION ?= $(if $(DATA),$(DATA)_$(MODEL_SIZE),shapes)
TRAIN_ARGS ?=
# `make ablation SEEDS=3`: every row once per seed, seeds 0..SEEDS-1 (default: the config's [0])
SEEDS ?=
# checked before anything is installed or trained (a leading 0 would read as octal)
ifneq ($(SEEDS),)
ifeq ($(shell echo '$(SEEDS)' | grep -Ex '[1-9][0-9]*'),)
$(error SEEDS=$(SEEDS): give the number of seeds, a whole number from 1 (seeds 0 to SEEDS-1), e.g. SEEDS=3)
endif
endif
# `make bench`: options of the speed benchmark (python -m benchmarks.speed --help) and of the
# baselines' benchmark (python -m benchmarks.baselines --help)
BENCH_ARGS ?=
BENCH_ARGS_BASELINES ?=
# and of the exported models' benchmark (python -m benchmarks.export --help)
BENCH_ARGS_EXPORT ?=
# and of the necks' speed (the CPU-sized DSSD with each neck in turn)
BENCH_ARGS_NECKS ?=
NECK_MODELS := ssd_r18:pm=c dssd_r18 dssd_r18:neck=fpn dssd_r18:neck=panet dssd_r18:neck=bifpn

.PHONY: install data train ablation bench test test-full lint format clean

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

# The paper's Table 4, row by row and seed by seed (src/ablation.py, conf/table4.yaml); results
# in logs/ablation/<setting>/table4.{md,csv}. `make ablation DATA=voc0712 MODEL_SIZE=321` is the
# paper's setting; ARGS go to src/ablation.py (e.g. ARGS="force=true"), TRAIN_ARGS to each run.
# TRAIN_ARGS as one Hydra string (its single quotes escaped), given as one shell word (its single
# quotes closed and reopened), so that quotes, spaces and brackets in it reach each run
squote := '
TRAIN_ARGS_HYDRA = '$(subst $(squote),\$(squote),$(TRAIN_ARGS))'
TRAIN_ARGS_WORD = '$(subst $(squote),$(squote)\$(squote)$(squote),train_args=$(TRAIN_ARGS_HYDRA))'

# the embedded data is built for the settings that train on it
ablation: $(if $(findstring shapes,$(ABLATION)),data,install)
	$(PY) src/ablation.py ablation=$(ABLATION) $(TRAIN_ARGS_WORD) \
		$(if $(SEEDS),'seeds=[$(shell seq -s, 0 $$(($(SEEDS) - 1)))]') $(ARGS)

# Speed in the layout of the paper's Table 7 (images/s at batch 1 and a large batch, BN unfolded
# and folded, with and without NMS, training in memory and fed by the shapes loader), then the
# baselines, then the exported models (onnxruntime, TorchScript) against eager, then the CPU-sized
# DSSD with each neck (neck=dssd|fpn|panet|bifpn, and none); see
# docs/benchmarks.md. `BENCH_ARGS="--profile DIR"` adds profiler traces.
# On a GPU: make bench BENCH_ARGS="--bf16 --channels-last --large-batch 64 data.num_workers=12"
bench: install
	$(PY) -m benchmarks.speed $(BENCH_ARGS)
	$(PY) -m benchmarks.baselines $(BENCH_ARGS_BASELINES)
	$(PY) -m benchmarks.export $(BENCH_ARGS_EXPORT)
	$(PY) -m benchmarks.speed --models $(NECK_MODELS) --train-data none $(BENCH_ARGS_NECKS)

# Fast suite (slow tests excluded); `make test-full` runs everything.
test: install
	$(PY) -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

test-full: install
	$(PY) -m pytest -m "" $(PYTEST_XDIST) $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: install
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
