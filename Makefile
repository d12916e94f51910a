# Stages are linked through files: the store is a real target, training runs depend on it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VIDFEAT := $(VENV)/bin/vidfeat
STAMP := $(VENV)/.vidfeat-installed

DATASET ?= sample
DATA_ROOT ?= data/$(DATASET)
BACKBONE ?= efficientnet_lite0
FPS ?=
FEATURES_DIR ?= features
STORE := $(FEATURES_DIR)/$(DATASET)_$(BACKBONE)$(if $(FPS),_fps$(FPS)).h5
EXTRACT_FLAGS ?=
# CLUSTER=local (one Dask worker per GPU) or local:N: extract into the shard directory $(STORE:.h5=.shards)/ and
# merge it into $(STORE) at the end.
CLUSTER ?=
HEAD ?= lstm
FOLD ?= 1
RUNS_DIR ?= runs
TRAIN_FLAGS ?=
RUN := $(RUNS_DIR)/$(basename $(notdir $(STORE)))_$(HEAD)$(if $(filter-out 1,$(FOLD)),_fold$(FOLD))
RUN_RESULT := $(RUN)/$(if $(filter all,$(FOLD)),summary.json,metrics.json)
DEMO_HEADS := mean logreg lstm tcn transformer

.PHONY: setup test extract train demo demo-relational demo-spatial demo-flow bench cuda-check bench-train fuzz

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,dist]'
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q

extract: $(STORE)

# A failed or interrupted extraction keeps what it stored (a rerun resumes) but is dated back to 1970,
# so make does not mistake the partial store for an up-to-date one.
$(STORE): | $(STAMP)
	mkdir -p $(FEATURES_DIR)
	$(VIDFEAT) extract --dataset $(DATASET) --data-root $(DATA_ROOT) --backbone $(BACKBONE) \
		$(if $(FPS),--fps $(FPS)) $(EXTRACT_FLAGS) $(if $(CLUSTER),--cluster $(CLUSTER) --out $(@:.h5=.shards) --merge,--out) \
		$@ || { touch -c -d @0 $@; exit 1; }

train: $(RUN_RESULT)

# The run is derived from the store: a re-extracted store makes it stale, so it is trained again from scratch.
$(RUN_RESULT): $(STORE) | $(STAMP)
	rm -rf $(RUN)
	$(VIDFEAT) train-temporal --head $(HEAD) --features $(STORE) --fold $(FOLD) --out $(RUN) --no-progress $(TRAIN_FLAGS)

# The relational benchmarks (geometry decides / appearance decides who does what): region features from their
# ground-truth boxes; frame heads vs the GCN over RoIs and its box-only ablation, for each seed in REL_SEEDS.
REL_BENCHMARKS := relational relational_roles
REL_SEEDS ?= 0
REL_RUNS := $(RUNS_DIR)/relational
REL_STORES := $(foreach b,$(REL_BENCHMARKS),$(FEATURES_DIR)/$(b)_$(BACKBONE)_fps4_rois.h5)

$(REL_STORES): $(FEATURES_DIR)/%_$(BACKBONE)_fps4_rois.h5: | $(STAMP)
	mkdir -p $(FEATURES_DIR)
	$(VIDFEAT) extract --dataset $* --data-root data/$* --backbone $(BACKBONE) --fps 4 \
		--rois file:data/$*/boxes.csv --max-rois 4 --out $@ || { touch -c -d @0 $@; exit 1; }

demo-relational: $(REL_STORES)
	rm -rf $(REL_RUNS)
	set -e; for b in $(REL_BENCHMARKS); do for seed in $(REL_SEEDS); do \
		store=$(FEATURES_DIR)/$${b}_$(BACKBONE)_fps4_rois.h5; runs=$(REL_RUNS)/$$b/seed$$seed; \
		for head in mean lstm transformer gcn; do \
			$(VIDFEAT) train-temporal --head $$head --features $$store --seed $$seed --out $$runs/$$head --no-progress > /dev/null; \
		done; \
		$(VIDFEAT) train-temporal --head gcn -o appearance=false -o global_branch=false --features $$store --seed $$seed \
			--out $$runs/gcn_boxes --no-progress > /dev/null; \
	done; echo "$$b:"; $(VIDFEAT) compare $(REL_RUNS)/$$b/seed*/*; done

# The crossing tasks (real-image objects crossing real scenes; the class is where they are at each step): a
# 4x4 spatial grid per frame, frame heads beside the spatial heads, for each task in SPATIAL_TASKS (also
# crossing_direction) and each seed in SPATIAL_SEEDS.
SPATIAL_TASKS ?= crossing_swap
SPATIAL_SEEDS ?= 0
SPATIAL_HEADS := mean lstm transformer timesformer eco
SPATIAL_RUNS := $(RUNS_DIR)/spatial
SPATIAL_STORES := $(foreach t,$(SPATIAL_TASKS),$(FEATURES_DIR)/$(t)_$(BACKBONE)_spatial4.h5)

$(SPATIAL_STORES): $(FEATURES_DIR)/%_$(BACKBONE)_spatial4.h5: | $(STAMP)
	mkdir -p $(FEATURES_DIR)
	$(VIDFEAT) extract --dataset $* --data-root data/$* --backbone $(BACKBONE) --spatial 4 --out $@ \
		|| { touch -c -d @0 $@; exit 1; }

demo-spatial: $(SPATIAL_STORES)
	rm -rf $(SPATIAL_RUNS)
	set -e; for t in $(SPATIAL_TASKS); do for seed in $(SPATIAL_SEEDS); do \
		store=$(FEATURES_DIR)/$${t}_$(BACKBONE)_spatial4.h5; runs=$(SPATIAL_RUNS)/$$t/seed$$seed; \
		for head in $(SPATIAL_HEADS); do \
			$(VIDFEAT) train-temporal --head $$head --features $$store --seed $$seed --out $$runs/$$head --no-progress > /dev/null; \
		done; \
	done; echo "$$t:"; $(VIDFEAT) compare $(SPATIAL_RUNS)/$$t/seed*/*; done

# The motion tasks (issue 12's known answers, generated under data/): an RGB store and a flow store (Farnebäck,
# HOF/MBH) of each task in FLOW_TASKS, then the order-blind mean head (TSN consensus) on RGB, on flow and on both
# (late fusion, RGB:flow 1:1.5), for each seed in FLOW_SEEDS, compared per task.
FLOW_TASKS ?= random_dots kind_motion
FLOW_SEEDS ?= 0
FLOW_RUNS := $(RUNS_DIR)/flow
FLOW_RGB_STORES := $(foreach t,$(FLOW_TASKS),$(FEATURES_DIR)/$(t)_$(BACKBONE).h5)
FLOW_STORES := $(foreach t,$(FLOW_TASKS),$(FEATURES_DIR)/$(t)_flow.h5)

$(FLOW_RGB_STORES): $(FEATURES_DIR)/%_$(BACKBONE).h5: | $(STAMP)
	mkdir -p $(FEATURES_DIR)
	$(VIDFEAT) extract --dataset $* --data-root data/$* --backbone $(BACKBONE) --out $@ || { touch -c -d @0 $@; exit 1; }

$(FLOW_STORES): $(FEATURES_DIR)/%_flow.h5: | $(STAMP)
	mkdir -p $(FEATURES_DIR)
	$(VIDFEAT) extract --dataset $* --data-root data/$* --flow farneback --out $@ || { touch -c -d @0 $@; exit 1; }

demo-flow: $(FLOW_RGB_STORES) $(FLOW_STORES)
	rm -rf $(FLOW_RUNS)
	set -e; for t in $(FLOW_TASKS); do for seed in $(FLOW_SEEDS); do \
		rgb=$(FEATURES_DIR)/$${t}_$(BACKBONE).h5; flow=$(FEATURES_DIR)/$${t}_flow.h5; runs=$(FLOW_RUNS)/$$t/seed$$seed; \
		train="$(VIDFEAT) train-temporal --head mean --segments 16 --seed $$seed --no-progress"; \
		$$train --features $$rgb --out $$runs/rgb > /dev/null; \
		$$train --features $$flow --out $$runs/flow > /dev/null; \
		$$train --features $$rgb --features $$flow --out $$runs/two_stream > /dev/null; \
	done; echo "$$t:"; $(VIDFEAT) compare $(FLOW_RUNS)/$$t/seed*/*; done

demo: $(STAMP)
	$(MAKE) --no-print-directory extract DATASET=sample
	$(VIDFEAT) features info $(STORE)
	for head in $(DEMO_HEADS); do $(MAKE) --no-print-directory train DATASET=sample HEAD=$$head || exit 1; done
	$(PY) -m vidfeat.pipelines.demo $(foreach head,$(DEMO_HEADS),$(RUNS_DIR)/$(basename $(notdir $(STORE)))_$(head))
	$(MAKE) --no-print-directory demo-relational
	$(MAKE) --no-print-directory demo-spatial
	$(MAKE) --no-print-directory demo-flow

BENCH_BACKBONES ?= efficientnet_lite0 resnet50

bench: $(STAMP)
	for backbone in $(BENCH_BACKBONES); do $(PY) -m vidfeat.extract.bench --backbone $$backbone || exit 1; done
	$(PY) -m vidfeat.extract.bench --flow

# One prepared run for a lent GPU node: the CUDA tests (they skip without CUDA), then the bench with its GPU rows.
cuda-check: $(STAMP)
	$(PY) -m pytest -q tests/test_device.py tests/test_decode_pool.py
	$(MAKE) --no-print-directory bench BENCH_BACKBONES=resnet50

bench-train: $(STAMP)
	$(PY) -m vidfeat.temporal.bench

# Fault campaigns against whole extraction runs: damaged real clips, kill -9 at random moments, in commits and
# merges. Prints trials / survived / lost / crashes / hangs; fails when anything was lost.
FUZZ_FLAGS ?=
fuzz: $(STAMP)
	$(PY) -m vidfeat.pipelines.fuzz $(FUZZ_FLAGS)
