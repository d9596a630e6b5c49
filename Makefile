# hotdog: data -> training -> weights -> hotdog.mar (TorchServe) and .pte (ExecuTorch).
# Every target installs what it needs through `setup`, so a fresh clone needs no manual step.
SHELL := /bin/bash
PY := .venv/bin/python
DATA ?= ../shared/data/hotdog/train
TEST_DATA ?= ../shared/data/hotdog/test
RUN ?= runs/latest
WEIGHTS ?= weights

.PHONY: setup train ship eval bench-train test clean

setup: .venv/.installed
.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

# Reproduce the shipped model (30 min on a 2-core CPU): `make train RUN=runs/mine`.
train: setup
	$(PY) -m training.train --config training/configs/hotdog.yaml --data $(DATA) --out $(RUN)

# Make a finished run the shipped model (then `make eval` writes its test report beside it).
SHIPPED_FILES := model.pt preprocess.json manifest.json config.yaml metrics.jsonl curves.png data_files.txt
ship:
	@test -f $(RUN)/manifest.json || { echo "error: $(RUN) is not a finished run (no manifest.json)" >&2; exit 2; }
	rm -f $(WEIGHTS)/*
	cp $(addprefix $(RUN)/,$(SHIPPED_FILES)) $(WEIGHTS)/

# Time to accuracy, seed recipe vs ours, same budget and data, one after the other (about 70 min).
bench-train: setup
	$(PY) -m training.bench_train --data $(DATA) --test-data $(TEST_DATA)

# Evaluate weights (default: the shipped ones) on the test split; writes JSON + PNGs beside them.
eval: setup
	$(PY) -m training.evaluate --weights $(WEIGHTS) --data $(TEST_DATA)

# ExecuTorch .pte files for iOS (fp32, int8, Core ML) + hotdog.json in mobile_export/out/; regenerates the
# iOS sample's PreprocessConstants.swift. int8 calibrates on training images only.
.PHONY: export export-parity bench-mobile
export: setup
	$(PY) -m mobile_export.export --weights $(WEIGHTS) --calib-data $(DATA)

# The .pte files vs eager PyTorch on the test split, run by the ExecuTorch runtime -> reports/mobile_parity.json.
export-parity: setup
	$(PY) -m mobile_export.parity --weights $(WEIGHTS) --data $(TEST_DATA)

# Batch-1 latency, eager vs fp32 .pte vs int8 .pte, in one process -> reports/bench_mobile.json.
bench-mobile: setup
	$(PY) -m mobile_export.bench --weights $(WEIGHTS)

test: setup
	$(PY) -m pytest -q tests

clean:
	rm -rf runs .cache model_store logs .pytest_cache
