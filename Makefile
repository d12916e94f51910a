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
HEAD ?= lstm
FOLD ?= 1
RUNS_DIR ?= runs
TRAIN_FLAGS ?=
RUN := $(RUNS_DIR)/$(basename $(notdir $(STORE)))_$(HEAD)$(if $(filter-out 1,$(FOLD)),_fold$(FOLD))
RUN_RESULT := $(RUN)/$(if $(filter all,$(FOLD)),summary.json,metrics.json)
DEMO_HEADS := mean logreg lstm tcn transformer

.PHONY: setup test extract train demo demo-relational bench bench-train

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q

extract: $(STORE)

# A failed or interrupted extraction keeps what it stored (a rerun resumes) but is dated back to 1970,
# so make does not mistake the partial store for an up-to-date one.
$(STORE): | $(STAMP)
	mkdir -p $(FEATURES_DIR)
	$(VIDFEAT) extract --dataset $(DATASET) --data-root $(DATA_ROOT) --backbone $(BACKBONE) \
		$(if $(FPS),--fps $(FPS)) $(EXTRACT_FLAGS) --out $@ || { touch -c -d @0 $@; exit 1; }

train: $(RUN_RESULT)

# The run is derived from the store: a re-extracted store makes it stale, so it is trained again from scratch.
$(RUN_RESULT): $(STORE) | $(STAMP)
	rm -rf $(RUN)
	$(VIDFEAT) train-temporal --head $(HEAD) --features $(STORE) --fold $(FOLD) --out $(RUN) --no-progress $(TRAIN_FLAGS)

# The relational benchmark: region features from its ground-truth boxes; mean vs lstm vs the GCN over RoIs.
REL_STORE := $(FEATURES_DIR)/relational_$(BACKBONE)_fps4_rois.h5
REL_RUNS := $(RUNS_DIR)/relational

$(REL_STORE): | $(STAMP)
	mkdir -p $(FEATURES_DIR)
	$(VIDFEAT) extract --dataset relational --data-root data/relational --backbone $(BACKBONE) --fps 4 \
		--rois file:data/relational/boxes.csv --max-rois 4 --out $@ || { touch -c -d @0 $@; exit 1; }

demo-relational: $(REL_STORE)
	rm -rf $(REL_RUNS)
	$(VIDFEAT) train-temporal --head mean --features $(REL_STORE) --out $(REL_RUNS)/mean --no-progress > /dev/null
	$(VIDFEAT) train-temporal --head lstm --features $(REL_STORE) --out $(REL_RUNS)/lstm --no-progress > /dev/null
	$(VIDFEAT) train-temporal --head gcn --features $(REL_STORE) --out $(REL_RUNS)/gcn --no-progress > /dev/null
	$(VIDFEAT) train-temporal --head gcn -o appearance=false --features $(REL_STORE) --out $(REL_RUNS)/gcn_boxes \
		--no-progress > /dev/null
	$(VIDFEAT) compare $(REL_RUNS)/mean $(REL_RUNS)/lstm $(REL_RUNS)/gcn $(REL_RUNS)/gcn_boxes

demo: $(STAMP)
	$(MAKE) --no-print-directory extract DATASET=sample
	$(VIDFEAT) features info $(STORE)
	for head in $(DEMO_HEADS); do $(MAKE) --no-print-directory train DATASET=sample HEAD=$$head || exit 1; done
	$(PY) -m vidfeat.pipelines.demo $(foreach head,$(DEMO_HEADS),$(RUNS_DIR)/$(basename $(notdir $(STORE)))_$(head))
	$(MAKE) --no-print-directory demo-relational

bench: $(STAMP)
	$(PY) -m vidfeat.extract.bench
	$(PY) -m vidfeat.extract.bench --backbone resnet50

bench-train: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m vidfeat.temporal.bench
