# Everything runs inside .venv, built from constraints.txt (the pinned, reproducible environment).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.zls-installed
RUN ?= shapes-default

.PHONY: setup browser run benchmark lab docs test test-fast results speed voc-rehearsal gpu-check check-sync lint nbtest pytest clean-venv

$(STAMP): constraints.txt settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt pip setuptools wheel
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt --no-build-isolation -e '.[dev]'
	touch $@

setup: $(STAMP)

run: setup
	$(BIN)/zls run --name $(RUN)

# headless Chromium for the browser tests (Debian packages; needs root, as on CI)
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { \
	  command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] || { echo "install Debian's chromium and chromium-driver (root needed)"; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# JupyterLab on the repository with the project's .venv (its kernel and the ipywidgets extension);
# Jupyter refuses root without --allow-root, which containers need
lab: setup
	$(BIN)/jupyter lab --notebook-dir=. $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# the documentation site in _docs/: every nbs/ page executed, API docs, and the shapes run's report
# (made first if missing); nbdev_docs where Quarto is installed, else the offline Sphinx build of zls.docs
docs: setup
	test -f outputs/$(RUN)/report.ipynb || $(BIN)/zls run --name $(RUN)
	if command -v quarto >/dev/null 2>&1; then $(BIN)/nbdev_docs; \
	else $(BIN)/python -m zls.docs --report outputs/$(RUN)/report.ipynb; fi

# every method on shapes, 3 seeds: outputs/benchmark/benchmark.md, .csv, .png (resumable)
benchmark: setup
	mkdir -p outputs/benchmark
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(BIN)/papermill --no-progress-bar pipelines/benchmark.ipynb outputs/benchmark/benchmark.ipynb

test: setup browser
	$(MAKE) --no-print-directory check-sync
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory nbtest
	$(MAKE) --no-print-directory pytest

# zls/ is generated from nbs/ and notebooks are stored clean: exporting or cleaning must change nothing.
SYNCED = find zls -name '*.py' -not -path '*/__pycache__/*'; find nbs pipelines -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*'
check-sync: setup
	@before="$$( { $(SYNCED); } | sort | xargs sha1sum)"; \
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean && $(BIN)/nbdev_clean --fname pipelines; \
	after="$$( { $(SYNCED); } | sort | xargs sha1sum)"; \
	if [ "$$before" != "$$after" ]; then \
	  echo "check-sync: nbdev_export/nbdev_clean changed these files; commit the exported/cleaned versions:"; \
	  diff <(echo "$$before") <(echo "$$after"); exit 1; \
	else echo "check-sync: zls/ matches nbs/, notebooks are clean"; fi

# style: 120 columns, no statements packed with ';', pyflakes (ruff.toml)
lint: setup
	$(BIN)/ruff check zls tests

nbtest: setup browser
	# one thread per notebook process: two processes on two cores, no OpenMP oversubscription
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --timing

# two pytest workers, one thread each (the tests' runs pin their own threads): the 2 cores both busy
pytest: setup browser
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -n 2 --durations=15 tests

# the edit loop (a few minutes): sync, lint, the notebooks that do not train, and the tests not marked slow
FAST_SKIP ?= ^([_.]|1[5-8]_|2[134]_)
test-fast: setup
	$(MAKE) --no-print-directory check-sync
	$(MAKE) --no-print-directory lint
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --timing --skip_file_re '$(FAST_SKIP)'
	$(BIN)/pytest -q -m 'not slow' tests

# training, labeling and evaluation images/s on this machine's CPU under torch's own kernels: the small backbone at
# 64 px on one thread and on all cores, DeepLabv3 ResNet-101 at crop 321, batch 2 (a few steps), and the small backbone
# under the portable kernels where this CPU has them (an Intel CPU with AVX2); RESULTS.md's speed table comes from
# results/speed_cpu.csv
speed: setup
	$(BIN)/zls speed --backbone small --crop 64 --batch 16 --steps 20 --device cpu --out results/speed_cpu.csv
	$(BIN)/zls speed --backbone small --crop 64 --batch 16 --steps 20 --device cpu --threads $$(nproc) \
	  --out results/speed_cpu.csv --append
	$(BIN)/zls speed --backbone deeplabv3_resnet101 --crop 321 --batch 2 --steps 2 --warmup 1 --device cpu \
	  --out results/speed_cpu.csv --append
	-ZLS_KERNELS=portable $(BIN)/zls speed --backbone small --crop 64 --batch 16 --steps 20 --device cpu \
	  --out results/speed_cpu.csv --append

# the shipped voc-strict configuration (DeepLab-v2 ResNet-101, crop 321, 6-view labeling, full-resolution
# evaluation) for a few steps per round on a generated tree of VOC-sized JPEGs: peak memory, seconds per stage and
# one loader worker's images/s -> results/voc_rehearsal.csv (about 15 minutes on 2 cores; VOC_TREE: train, val, sbd)
VOC_TREE ?= 4 2 4
voc-rehearsal: setup
	$(BIN)/python -m zls.rehearsal results/voc_rehearsal.csv $(VOC_TREE)

# the GPU path, on a GPU machine whose Python already has torch and torchvision (no registry needed): zls goes in
# without dependencies over that torch, then DeepLabv3 ResNet-101 speed (crop 321, batch 8, bfloat16) and a tiny
# STRICT run on CUDA, one summary line. Fails at once, saying so, where no GPU is visible.
GPU_PYTHON ?= python3
gpu-check:
	@$(GPU_PYTHON) -c "import torch, sys; torch.cuda.is_available() or sys.exit('gpu-check: no CUDA GPU visible to ' + \
	  'this Python (torch ' + torch.__version__ + '); run make gpu-check on a GPU machine')"
	$(GPU_PYTHON) -m pip install -q --no-deps --no-build-isolation -e . || echo "gpu-check: pip could not install zls; using it from the checkout"
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) -m zls.cli gpu-check

# RESULTS.md's result tables (and the README's two), regenerated from results/*.csv (the tests check that they agree)
results: setup
	$(BIN)/zls results

clean-venv:
	rm -rf $(VENV)
