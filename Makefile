# hotdog: data -> training -> weights -> hotdog.mar (TorchServe) and .pte (ExecuTorch).
# Every target installs what it needs through `setup`, so a fresh clone needs no manual step.
SHELL := /bin/bash
PY := .venv/bin/python
# Photos come from DATA_ROOT when given on the command line, else ../shared/data, else data/ (what `make data`
# fills; training/data.py:data_home). DATA=dir or TEST_DATA=dir points one command at another ImageFolder.
DATA ?=
TEST_DATA ?=
DATA_ARG = $(if $(DATA),--data $(DATA))
TEST_DATA_ARG = $(if $(TEST_DATA),--data $(TEST_DATA))
RUN ?= runs/latest
WEIGHTS ?= weights
# Where `make data` assembles the photos from their public sources (docs/data.md).
DATA_ROOT ?= data

.PHONY: setup train train-transfer compare ship eval bench-train bench-train-step test clean mar grpc-stubs serve stop predict predict-grpc serve-parity web

setup: .venv/.installed
.venv/.installed: pyproject.toml
	@echo "setup: installing the pinned stack from pyproject.toml into .venv (first run only; README: First run)"
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install --progress-bar on -e .
	touch $@

# Every training and test photo, downloaded from its public source at a pinned commit, checked and
# assembled into $(DATA_ROOT)/hotdog and $(DATA_ROOT)/hotdog-more (about 260 MB; a second run only verifies).
.PHONY: data
data: setup
	$(PY) -m data_sources.fetch --root $(DATA_ROOT)

# Reproduce the shipped model (80 CPU-minutes on 2 cores; every source, distilled from Lite2):
# `make train RUN=runs/mine`; another recipe: `make train TRAIN_CONFIG=training/configs/hotdog.yaml`.
TRAIN_CONFIG ?= training/configs/distill-patient.yaml
train: setup
	$(PY) -m training.train --config $(TRAIN_CONFIG) $(DATA_ARG) --out $(RUN)

# The transfer-learning arm: a pretrained EfficientNet-Lite + a fitted two-class head (the teacher of
# $(TRAIN_CONFIG)) -> $(TRANSFER_RUN)/ and $(TRANSFER_RUN)-zero-shot/; `make eval WEIGHTS=...` scores them.
TRANSFER_RUN ?= runs/transfer
train-transfer: setup
	$(PY) -m training.transfer --config $(TRAIN_CONFIG) $(DATA_ARG) --out $(TRANSFER_RUN)

# Leave-one-source-out: the 30-minute recipe without each of the three largest training sources; student
# and teacher (fitted without it too) scored on its photos -> $(LOSO_REPORT). About 100 CPU-minutes.
LOSO_CONFIG ?= training/configs/distill-patient-30min.yaml
LOSO_SOURCES ?= kaggle sasyl_fastfood vishalpatel_hotdog
LOSO_REPORT ?= docs/train_runs/loso.json
.PHONY: loso
loso: setup
	for source in $(LOSO_SOURCES); do \
	  $(PY) -m training.train --config $(LOSO_CONFIG) $(DATA_ARG) --exclude-source $$source --out runs/loso-$$source || exit 1; done
	$(PY) -m training.loso $(addprefix runs/loso-,$(LOSO_SOURCES)) --out $(LOSO_REPORT)

# Does a finished run beat the shipped model? Per-photo val loss on every source, paired: `make compare CANDIDATES=runs/mine`.
CANDIDATES ?= $(RUN)
compare: setup
	$(PY) -m training.compare $(WEIGHTS) $(CANDIDATES)

# Make a finished run the shipped model (then `make eval` writes its test report beside it).
SHIPPED_FILES := model.pt preprocess.json manifest.json config.yaml metrics.jsonl curves.png data_files.txt
ship:
	@test -f $(RUN)/manifest.json || { echo "error: $(RUN) is not a finished run (no manifest.json)" >&2; exit 2; }
	rm -f $(WEIGHTS)/*
	cp $(addprefix $(RUN)/,$(SHIPPED_FILES)) $(WEIGHTS)/

# Time to accuracy, seed recipe vs ours, same budget and data, one after the other (about 70 min).
bench-train: setup
	$(PY) -m training.bench_train $(DATA_ARG) $(if $(TEST_DATA),--test-data $(TEST_DATA))

# Training-step speed of eager vs channels_last vs torch.compile on this CPU -> reports/bench_train_step.json
bench-train-step: setup
	$(PY) -m training.bench_step

# Evaluate weights (default: the shipped ones) on the test split; writes JSON + PNGs beside them.
eval: setup
	$(PY) -m training.evaluate --weights $(WEIGHTS) $(TEST_DATA_ARG)

# ExecuTorch .pte files (fp32, int8, Core ML) + hotdog.json in exported/, committed like weights/: the
# default archive runs the int8 one and the iOS app bundles them. Re-run after retraining (int8 calibrates
# on training images only, so it needs $(DATA)); regenerates the iOS sample's PreprocessConstants.swift.
.PHONY: export export-parity bench-mobile
EXPORTED := exported
PTE_META := $(EXPORTED)/hotdog.json
export: setup
	$(PY) -m mobile_export.export --weights $(WEIGHTS) $(if $(DATA),--calib-data $(DATA))

# The .pte files vs eager PyTorch on the test split, run by the ExecuTorch runtime -> reports/mobile_parity.json.
export-parity: setup
	$(PY) -m mobile_export.parity --weights $(WEIGHTS) $(TEST_DATA_ARG)

# Batch-1 latency, eager vs fp32 .pte vs int8 .pte, in one process -> reports/bench_mobile.json.
bench-mobile: setup
	$(PY) -m mobile_export.bench --weights $(WEIGHTS)

test: setup mar grpc-stubs
	$(PY) -m pytest -q tests --ignore=tests/test_image.py

# Deliberate breakages (no optimizer step, flipped labels, inverted CMYK, ...), each against the tests that
# must catch it, in a scratch copy of the tree -> reports/mutations.json. A tool, not part of `make test`.
.PHONY: test-mutations
test-mutations: setup
	$(PY) tests/mutations.py

# --- Serving (TorchServe) ---------------------------------------------------------------------
# hotdog.mar: the ExecuTorch int8 runtime (serve_config/model-config.yaml) with exported/'s int8 .pte,
# rebuilt whenever the weights, the programs, the handler, model_src or the model config change. An
# export from other weights or another exporter is refused with both hashes (run `make export`).
MAR := model_store/hotdog.mar
MAR_INPUTS := $(addprefix $(WEIGHTS)/,model.pt preprocess.json manifest.json) handlers/hotdog_handler.py \
	$(wildcard model_src/*.py) serve_config/model-config.yaml serving/archive.py \
	$(PTE_META) $(EXPORTED)/hotdog_xnnpack_int8.pte
mar: $(MAR)
$(MAR): $(MAR_INPUTS) | setup
	$(PY) -m serving.archive --weights $(WEIGHTS)

# The plain PyTorch fp32 archive (serve_config/model-config.eager.yaml) -> model_store/eager/hotdog.mar;
# serve it with `make serve SERVE_MAR=model_store/eager/hotdog.mar`.
MAR_EAGER := model_store/eager/hotdog.mar
mar-eager: $(MAR_EAGER)
$(MAR_EAGER): $(MAR_INPUTS) serve_config/model-config.eager.yaml | setup
	$(PY) -m serving.archive --weights $(WEIGHTS) --store $(dir $@) --model-config serve_config/model-config.eager.yaml
# The int8 archive is the default one now; the old name still builds it.
mar-int8: mar

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

# Start TorchServe on hotdog.mar (or SERVE_MAR), wait until the model is READY, then answer one prediction.
SERVE_MAR ?= $(MAR)
serve: $(SERVE_MAR) | setup
	$(PY) -m serving.server start $(CLIENT_ARGS) --tmpdir $(SERVE_TMPDIR) --mar $(SERVE_MAR)
	$(PY) -m serving.http_client $(SAMPLE_IMG) $(CLIENT_ARGS)

stop: setup
	$(PY) -m serving.server stop --workdir $(SERVE_WORKDIR) --tmpdir $(SERVE_TMPDIR)

predict: setup
	@test -n "$(IMG)" || { echo "usage: make predict IMG=path/to/photo.jpg" >&2; exit 2; }
	$(PY) -m serving.http_client $(IMG) $(CLIENT_ARGS)

predict-grpc: grpc-stubs
	@test -n "$(IMG)" || { echo "usage: make predict-grpc IMG=path/to/photo.jpg" >&2; exit 2; }
	$(PY) -m serving.grpc_client $(IMG) $(CLIENT_ARGS)

# Serving speed, side by side in one run: FastAPI baselines (same weights; the seed-style app) vs our
# TorchServe (default int8, eager), C=1/8/32 -> reports/bench_serve.{json,png}.
# BENCH_ARGS="--quick" for a smoke run, "--variants ..." for a sweep.
.PHONY: mar-eager mar-int8 bench-serve
bench-serve: setup
	$(PY) -m bench.serve_load --weights $(WEIGHTS) $(TEST_DATA_ARG) $(BENCH_ARGS)

# CPU per request inside a worker (handler steps vs TorchServe's Python side), from the built archive
# -> reports/handler_cost.json: read it beside bench-serve's server CPU per request.
.PHONY: bench-handler
bench-handler: mar
	$(PY) -m bench.handler_cost $(TEST_DATA_ARG)

# Every test/ image through the running server vs offline evaluation -> reports/serve_parity.json.
serve-parity: setup
	$(PY) -m bench.parity $(TEST_DATA_ARG) --weights $(WEIGHTS) --out reports/serve_parity.json $(CLIENT_ARGS)

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
	$(PY) -m bench.soak --requests $(SOAK_REQUESTS) --concurrency 32 $(TEST_DATA_ARG) --out reports/soak.json

# --- Container image (Dockerfile; docs/deploy.md) ---------------------------------------------------
# make image: debian:bookworm-slim made here from Debian packages (debootstrap), then the Dockerfile built on
# it with buildah (deploy/build_image.sh). make test-image: run it, compare with the host's answers (CI runs it).
.PHONY: image test-image
IMAGE ?= hotdog:latest
image:
	bash deploy/build_image.sh $(IMAGE) .
test-image: image mar
	HOTDOG_IMAGE=$(IMAGE) $(PY) -m pytest -q tests/test_image.py

# --- Help: one line per target (tests/test_readme.py checks that every target is listed) ---------------
.PHONY: help
help:
	@printf '%-18s %s\n' \
	  help "this list" \
	  setup "install the pinned stack from pyproject.toml into .venv (every target runs it first)" \
	  data "download and check every training and test photo from its public source into DATA_ROOT" \
	  train "train ResNN with TRAIN_CONFIG (the shipped recipe: 80 CPU-minutes, every source, Lite2 teacher) into RUN" \
	  train-transfer "the transfer arm: the recipe's pretrained teacher + a fitted head -> runs/transfer" \
	  loso "leave-one-source-out: student and teacher trained without each large source, scored on it" \
	  compare "does RUN (CANDIDATES) beat weights/? paired per-photo validation loss, every source" \
	  ship "make a finished RUN the shipped model in weights/" \
	  eval "evaluate WEIGHTS on the test split; the report goes beside them" \
	  bench-train "time to accuracy, seed recipe vs ours, same budget (about 70 min)" \
	  bench-train-step "training-step speed: eager vs channels_last vs torch.compile" \
	  export "ExecuTorch .pte files + hotdog.json in exported/ from WEIGHTS" \
	  export-parity "the .pte files vs eager PyTorch on the test split -> reports/mobile_parity.json" \
	  bench-mobile "batch-1 latency of eager and the .pte files -> reports/bench_mobile.json" \
	  test "the whole test suite (real TorchServe, .pte files, Chromium)" \
	  test-mutations "deliberate breakages, one at a time, against the tests that must catch them -> reports/mutations.json" \
	  mar "build model_store/hotdog.mar (the int8 ExecuTorch archive)" \
	  mar-eager "build model_store/eager/hotdog.mar (fp32 PyTorch)" \
	  mar-int8 "the old name of mar" \
	  grpc-stubs "generate the gRPC client stubs from the installed TorchServe" \
	  serve "start TorchServe on hotdog.mar (or say it is up) and answer a prediction" \
	  stop "stop the TorchServe this checkout started" \
	  predict "classify IMG=photo.jpg over HTTP" \
	  predict-grpc "classify IMG=photo.jpg over gRPC" \
	  web "the phone page on http://127.0.0.1:8090 (LAN=1: for a phone on the same Wi-Fi)" \
	  serve-parity "every test photo through the running server vs offline -> reports/serve_parity.json" \
	  bench-serve "serving speed vs the FastAPI baselines -> reports/bench_serve.json" \
	  bench-handler "CPU per request inside a worker -> reports/handler_cost.json" \
	  bad-input-report "every bad input over HTTP and gRPC -> reports/bad_inputs.{json,md}" \
	  bench-faults "kill and stop a worker under load: recovery -> reports/faults.json" \
	  bench-soak "SOAK_REQUESTS test photos at concurrency 32 -> reports/soak.json" \
	  image "build the container image IMAGE (docs/deploy.md)" \
	  test-image "run the image and compare its answers with the host's" \
	  clean "remove runs, caches, archives, logs and build output"
