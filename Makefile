# vl_lab: `make report` and `make test` do all the set-up on a fresh machine (.venv from requirements.lock).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV := .venv
BIN := $(VENV)/bin
# no hub downloads at run time
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONHASHSEED := 0
# figures without a display for the batch targets only: JupyterLab's kernels draw inline (`make lab` below)
report test check export bench sweep scaling: export MPLBACKEND := Agg

.PHONY: venv report test check lab tensorboard bench lock export clean sweep scaling

venv:
	@bash tools/bootstrap.sh

report: venv  ## the lab report: reports/index.html (makes data/shapes first if it is missing)
	$(BIN)/vl-lab report

test: venv  ## every gate: notebooks and package in sync, notebooks clean, lint and format, notebook tests, pytest
	$(BIN)/python tools/check_nbdev.py
	$(BIN)/ruff check vl_lab tests bench tools
	$(BIN)/ruff format --check vl_lab tests bench tools
	# two notebooks run at once: one thread each, or their OpenMP threads spin against each other on 2 cores
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --timing
	# test files on every core (pytest-xdist), each file on one worker (module fixtures built once), one thread each
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n auto --dist loadfile tests

check: venv  ## the quick gates: notebooks and package in sync, lint and format
	$(BIN)/python tools/check_nbdev.py
	$(BIN)/ruff check vl_lab tests bench tools
	$(BIN)/ruff format --check vl_lab tests bench tools

export: venv  ## regenerate vl_lab/ from the notebooks and clean the notebooks
	$(BIN)/nbdev_export
	$(BIN)/ruff format -q vl_lab
	$(BIN)/nbdev_clean

# JupyterLab on 127.0.0.1 (token auth; JUPYTER_PORT and JUPYTER_TOKEN are read) with the project's .venv as the
# kernel, as root too (ML containers). Its kernels draw inline: an MPLBACKEND from the shell (Docker images often set
# Agg) is dropped, or no figure would show. A notebook saved from the lab is cleaned as `make export` cleans it
# (tools/jupyter/jupyter_server_config.py: nbdev's pre-save hook, then no outputs), so the notebook gate stays green.
lab: venv  ## JupyterLab on 127.0.0.1 with the .venv kernel; figures inline; notebooks cleaned on save
	env -u MPLBACKEND JUPYTER_CONFIG_PATH=$(CURDIR)/tools/jupyter$${JUPYTER_CONFIG_PATH:+:$$JUPYTER_CONFIG_PATH} \
	  $(BIN)/jupyter lab --ip=127.0.0.1 --no-browser --notebook-dir=. $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

tensorboard: venv  ## TensorBoard on 127.0.0.1 over the report's runs (their training curves, live while they train)
	$(BIN)/vl-lab tensorboard --out reports

bench: venv  ## benchmarks (they print ratios and rates; they are not tests)
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b; done

lock:  ## re-resolve requirements.in into requirements.lock in a scratch venv
	rm -rf /tmp/vl_lab-lock && python3 -m venv /tmp/vl_lab-lock
	/tmp/vl_lab-lock/bin/pip install -q -r requirements.in
	( echo '# Pinned environment for vl_lab. Regenerate with `make lock` after changing requirements.in.'; \
	  /tmp/vl_lab-lock/bin/pip freeze --all | grep -v -e '^pip==' ) > requirements.lock

clean:
	rm -rf $(VENV) _proc _docs

sweep: venv  ## the recipe sweep behind the cpu-tiny preset (sweep.yaml): reports/sweep/ and SWEEP.md
	$(BIN)/vl-lab report --plan sweep.yaml --out reports/sweep --table SWEEP.md

SCALING_DATA := data/shapes-16k
scaling: venv  ## the scaling study (scaling.yaml): reports/scaling/ and SCALING.md; its 16,000-image corpus made first
	test -f $(SCALING_DATA)/annotations.json || $(BIN)/vl-lab synth $(SCALING_DATA) --n-images 16000 --noise none --quiet
	$(BIN)/vl-lab report --plan scaling.yaml --out reports/scaling --table SCALING.md
