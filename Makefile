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

.PHONY: setup test extract demo bench

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

demo: $(STAMP)
	$(MAKE) --no-print-directory extract DATASET=sample
	$(VIDFEAT) features info $(FEATURES_DIR)/sample_$(BACKBONE)$(if $(FPS),_fps$(FPS)).h5

bench: $(STAMP)
	$(PY) -m vidfeat.extract.bench
