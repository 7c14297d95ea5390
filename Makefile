# Two entry points for a fresh machine:  `make report`  and  `make test`.
# Both create ./.venv when it is missing and install the project into it.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# On the project's CI machines a local CPU wheel satisfies this pin; elsewhere override, e.g.
#   make test TORCH_SPEC="torch>=2.4"   (any torch >= 2.4 works: fused Adam on CPU)
TORCH_SPEC ?= torch==2.13.0
PROFILE ?=
DATA_DIR_DEFAULT := $(abspath $(wildcard ../shared/data))
export KDREPRO_DATA_DIR ?= $(DATA_DIR_DEFAULT)

.PHONY: setup test test-all report benchmark lint lab clean-venv

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,lab]"
	$(BIN)/python -m ipykernel install --sys-prefix --name kdrepro --display-name "kdrepro (venv)" >/dev/null
	touch $@

setup: $(BIN)/.installed

test: setup
	$(BIN)/python -m pytest -q

report: setup
	$(BIN)/python run_all.py $(if $(PROFILE),--profile $(PROFILE),--as-published)

benchmark: setup
	$(BIN)/python -m kdrepro.benchmark

lint: setup
	$(BIN)/ruff check kdrepro tests run_all.py

lab: setup
	$(BIN)/jupyter lab notebooks/

clean-venv:
	rm -rf $(VENV)
