# hotdog: data -> training -> weights -> hotdog.mar (TorchServe) and .pte (ExecuTorch).
# Every target installs what it needs through `setup`, so a fresh clone needs no manual step.
SHELL := /bin/bash
PY := .venv/bin/python
DATA ?= ../shared/data/hotdog/train
TEST_DATA ?= ../shared/data/hotdog/test
RUN ?= runs/latest
WEIGHTS ?= weights

.PHONY: setup train train-transfer compare ship eval bench-train bench-train-step test clean mar grpc-stubs serve stop predict predict-grpc serve-parity web

setup: .venv/.installed
.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

# Reproduce the shipped model (30 min on a 2-core CPU): `make train RUN=runs/mine`.
train: setup
	$(PY) -m training.train --config training/configs/hotdog.yaml --data $(DATA) --out $(RUN)

# The transfer-learning arm: pretrained EfficientNet-Lite0 + a fitted two-class head (the teacher of
# training/configs/distill.yaml) -> $(TRANSFER_RUN)/ and $(TRANSFER_RUN)-zero-shot/; `make eval WEIGHTS=...` scores them.
TRANSFER_RUN ?= runs/transfer
train-transfer: setup
	$(PY) -m training.transfer --config training/configs/distill.yaml --data $(DATA) --out $(TRANSFER_RUN)

# Does a finished run beat the shipped model? Per-photo Kaggle val loss, paired: `make compare CANDIDATES=runs/mine`.
CANDIDATES ?= $(RUN)
compare: setup
	$(PY) -m training.compare $(WEIGHTS) $(CANDIDATES) --data $(DATA)

# Make a finished run the shipped model (then `make eval` writes its test report beside it).
SHIPPED_FILES := model.pt preprocess.json manifest.json config.yaml metrics.jsonl curves.png data_files.txt
ship:
	@test -f $(RUN)/manifest.json || { echo "error: $(RUN) is not a finished run (no manifest.json)" >&2; exit 2; }
	rm -f $(WEIGHTS)/*
	cp $(addprefix $(RUN)/,$(SHIPPED_FILES)) $(WEIGHTS)/

# Time to accuracy, seed recipe vs ours, same budget and data, one after the other (about 70 min).
bench-train: setup
	$(PY) -m training.bench_train --data $(DATA) --test-data $(TEST_DATA)

# Training-step speed of eager vs channels_last vs torch.compile on this CPU -> reports/bench_train_step.json
bench-train-step: setup
	$(PY) -m training.bench_step

# Evaluate weights (default: the shipped ones) on the test split; writes JSON + PNGs beside them.
eval: setup
	$(PY) -m training.evaluate --weights $(WEIGHTS) --data $(TEST_DATA)

# ExecuTorch .pte files for iOS (fp32, int8, Core ML) + hotdog.json in mobile_export/out/; regenerates the
# iOS sample's PreprocessConstants.swift. int8 calibrates on training images only.
.PHONY: export export-parity bench-mobile
# The .pte files the serving runtimes take from mobile_export/out: exported again when the weights or
# the exporter change (a .pte from other weights is refused by the handler).
PTE_META := mobile_export/out/hotdog.json
$(PTE_META): $(addprefix $(WEIGHTS)/,model.pt manifest.json preprocess.json) mobile_export/export.py | setup
	$(MAKE) --no-print-directory export
export: setup
	$(PY) -m mobile_export.export --weights $(WEIGHTS) --calib-data $(DATA)

# The .pte files vs eager PyTorch on the test split, run by the ExecuTorch runtime -> reports/mobile_parity.json.
export-parity: setup
	$(PY) -m mobile_export.parity --weights $(WEIGHTS) --data $(TEST_DATA)

# Batch-1 latency, eager vs fp32 .pte vs int8 .pte, in one process -> reports/bench_mobile.json.
bench-mobile: setup
	$(PY) -m mobile_export.bench --weights $(WEIGHTS)

test: setup mar grpc-stubs
	$(PY) -m pytest -q tests

# --- Serving (TorchServe) ---------------------------------------------------------------------
# hotdog.mar is rebuilt whenever the shipped weights, the handler, model_src or the model config change.
MAR := model_store/hotdog.mar
MAR_INPUTS := $(addprefix $(WEIGHTS)/,model.pt preprocess.json manifest.json) handlers/hotdog_handler.py \
	$(wildcard model_src/*.py) serve_config/model-config.yaml serving/archive.py
mar: $(MAR)
$(MAR): $(MAR_INPUTS) | setup
	$(PY) -m serving.archive --weights $(WEIGHTS)

# gRPC stubs generated from the .proto files inside the installed TorchServe (never copied here).
GRPC_STUBS := build/grpc/inference_pb2_grpc.py
grpc-stubs: $(GRPC_STUBS)
$(GRPC_STUBS): pyproject.toml serving/grpc_stubs.py | setup
	$(PY) -m serving.grpc_stubs

SAMPLE_IMG := $(firstword $(wildcard tests/data/sample/hot_dog/*.jpg))
# A second server elsewhere: make serve SERVE_CONFIG=other.properties SERVE_WORKDIR=dir SERVE_TMPDIR=dir
SERVE_CONFIG ?= serve_config/config.properties
SERVE_WORKDIR ?= .
SERVE_TMPDIR ?= .serve/tmp
CLIENT_ARGS = --config $(SERVE_CONFIG) --workdir $(SERVE_WORKDIR)

# Start TorchServe on hotdog.mar, wait until the model is READY, then answer one prediction.
serve: mar
	$(PY) -m serving.server start $(CLIENT_ARGS) --tmpdir $(SERVE_TMPDIR) $(if $(SERVE_MAR),--mar $(SERVE_MAR))
	$(PY) -m serving.http_client $(SAMPLE_IMG) $(CLIENT_ARGS)

stop: setup
	$(PY) -m serving.server stop --workdir $(SERVE_WORKDIR) --tmpdir $(SERVE_TMPDIR)

predict: setup
	@test -n "$(IMG)" || { echo "usage: make predict IMG=path/to/photo.jpg" >&2; exit 2; }
	$(PY) -m serving.http_client $(IMG) $(CLIENT_ARGS)

predict-grpc: grpc-stubs
	@test -n "$(IMG)" || { echo "usage: make predict-grpc IMG=path/to/photo.jpg" >&2; exit 2; }
	$(PY) -m serving.grpc_client $(IMG) $(CLIENT_ARGS)

# `make serve SERVE_MAR=model_store/int8/hotdog.mar` serves another archive (e.g. `make mar-int8`).
SERVE_MAR ?=

# hotdog.mar with the ExecuTorch XNNPACK int8 runtime and the tuned settings of
# serve_config/model-config.int8.yaml -> model_store/int8/hotdog.mar (the default `make mar` stays eager).
MAR_INT8 := model_store/int8/hotdog.mar
mar-int8: $(MAR_INT8)
$(MAR_INT8): $(MAR_INPUTS) serve_config/model-config.int8.yaml $(PTE_META) | setup
	$(PY) -m serving.archive --weights $(WEIGHTS) --store $(dir $@) \
		--model-config serve_config/model-config.int8.yaml --pte mobile_export/out/hotdog_xnnpack_int8.pte

# Serving speed, side by side in one run: FastAPI baseline vs our TorchServe (eager, tuned int8), C=1/8/32
# -> reports/bench_serve.{json,png}. BENCH_ARGS="--quick" for a smoke run, "--variants ..." for a sweep.
.PHONY: mar-int8 bench-serve
bench-serve: setup $(PTE_META)
	$(PY) -m bench.serve_load --weights $(WEIGHTS) --data $(TEST_DATA) $(BENCH_ARGS)

# Every test/ image through the running server vs offline evaluation -> reports/serve_parity.json.
serve-parity: setup
	$(PY) -m bench.parity --data $(TEST_DATA) --weights $(WEIGHTS) --out reports/serve_parity.json $(CLIENT_ARGS)

# The phone-friendly page in front of TorchServe (started first if it is not running): http://127.0.0.1:8090
# `make web LAN=1` listens on the network so a phone on the same Wi-Fi can open it. Ctrl-C stops the page.
WEB_PORT ?= 8090
web: setup
	@$(PY) -m web.proxy --check $(CLIENT_ARGS) || $(MAKE) --no-print-directory serve
	$(PY) -m web.proxy $(CLIENT_ARGS) --port $(WEB_PORT) $(if $(filter 1 yes true,$(LAN)),--lan)

clean:
	rm -rf runs .cache model_store logs .pytest_cache build .serve

# --- Hardening reports (each starts a private TorchServe on free ports and stops it) -----------------
.PHONY: bad-input-report bench-faults bench-soak
# Every case of bench/bad_inputs.py over HTTP and gRPC -> reports/bad_inputs.json + reports/bad_inputs.md
bad-input-report: mar grpc-stubs
	$(PY) -m bench.bad_inputs --out reports/bad_inputs.json
# kill -9 and SIGSTOP the worker under load: recovery time, failed requests -> reports/faults.json
bench-faults: mar
	$(PY) -m bench.faults --out reports/faults.json
# 10,000 real test JPEGs at concurrency 32: errors, p50/p99, worker RSS start/end -> reports/soak.json
SOAK_REQUESTS ?= 10000
bench-soak: mar
	$(PY) -m bench.soak --requests $(SOAK_REQUESTS) --concurrency 32 --data $(TEST_DATA) --out reports/soak.json
