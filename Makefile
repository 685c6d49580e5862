# Machine-unlearning recipes for image classifiers. `make help` lists the targets.
# Variables: DATASET (cifar10 | cifar100 | image folder), DATA_DIR, ARCH, EPOCHS, DEVICE, CLASS, MODEL, METHOD,
# EXTRA (more flags for the scripts, e.g. EXTRA="--subset 100"); JOBS, DEVICES: many models at once (below).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATASET ?= cifar10
DATA_DIR ?= ./data
ARCH ?= resnet18
EPOCHS ?= 200
DEVICE ?= auto
CLASS ?= cat
METHOD ?= ssd
N ?= 5
SHARDS ?= 4
JOBS ?= 1
DEVICES ?= $(DEVICE)
NAME := $(firstword $(subst ., ,$(notdir $(DATASET))))
MODEL ?= checkpoints/$(ARCH)_$(NAME)_full.pth
EXTRA ?=
DATA = --dataset $(DATASET) --data-dir $(DATA_DIR) --device $(DEVICE) $(EXTRA)
TRAIN = $(PY) train.py $(DATA) --arch $(ARCH) --epochs $(EPOCHS) --resume
# The demo uses the real CIFAR-10 images where this project's machines keep them, else downloads CIFAR-10.
DEMO_DATASET ?= $(if $(wildcard ../shared/data/cifar10-jpeg.tar.gz),../shared/data/cifar10-jpeg.tar.gz,cifar10)
DEMO = --dataset $(DEMO_DATASET) --data-dir $(DATA_DIR) --device $(DEVICE) --subset 300 --test-subset 100
DEMO_TRAIN = $(PY) train.py $(DEMO) --arch resnet20 --epochs 4 --batch-size 64 --resume

.PHONY: help install test demo train retrain retrain-all evaluate unlearn unlearn-table ensemble sisa sisa-shard-% sisa-unlearn bench clean-demo

# $(call parallel,TARGETS): make each target in its own process, JOBS at a time, the k-th on DEVICES[k mod n]
# (`make retrain-all JOBS=4 DEVICES="cuda:0 cuda:1"`: two jobs per GPU). Targets are files or resume, so a rerun
# after an interruption redoes only what is missing.
define parallel
	i=0; for t in $(1); do set -- $(DEVICES); shift $$((i % $$#)); echo "$$t $$1"; i=$$((i + 1)); done | \
	  xargs -P $(JOBS) -L 1 sh -c '$(MAKE) --no-print-directory "$$0" DEVICE="$$1"'
endef

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

install: $(VENV)/.installed  ## create .venv and install requirements.txt

test: $(VENV)/.installed  ## run the test suite (CPU, a few minutes)
	$(PY) -m pytest

demo: $(VENV)/.installed  ## a few minutes on a CPU: resnet20 on a subset, trained, CLASS retrained, both evaluated
	$(DEMO_TRAIN) --out runs/demo/full.pth
	$(DEMO_TRAIN) --forget-class $(CLASS) --out runs/demo/no_$(CLASS).pth
	$(PY) evaluate.py $(DEMO) --model runs/demo/full.pth --retrained runs/demo/no_$(CLASS).pth --forget-class $(CLASS) --mia

train: checkpoints/$(ARCH)_$(NAME)_full.pth  ## the full model: 200-epoch recipe on the whole train set

retrain: checkpoints/$(ARCH)_$(NAME)_no_$(CLASS).pth  ## the gold standard: the recipe without CLASS

retrain-all: $(VENV)/.installed  ## one retrain per class, JOBS at a time on DEVICES (finished ones kept)
	$(call parallel,$$($(PY) data.py --dataset $(DATASET) --data-dir $(DATA_DIR) | sed -n 's/^classes: //p' | \
	  sed -E 's|[^ ]+|checkpoints/$(ARCH)_$(NAME)_no_&.pth|g'))

checkpoints/$(ARCH)_$(NAME)_full.pth: | $(VENV)/.installed
	$(TRAIN) --out $@

checkpoints/$(ARCH)_$(NAME)_no_%.pth: | $(VENV)/.installed
	$(TRAIN) --forget-class $* --out $@

evaluate: $(VENV)/.installed  ## evaluate MODEL with CLASS forgotten, MIA included
	$(PY) evaluate.py $(DATA) --model $(MODEL) --forget-class $(CLASS) --mia

unlearn: $(VENV)/.installed  ## unlearn CLASS from MODEL with METHOD -> checkpoints/<dataset>_<arch>_<Method>_<class>.pth
	$(PY) unlearn.py $(DATA) --method $(METHOD) --model $(MODEL) --forget-class $(CLASS)

unlearn-table: $(VENV)/.installed  ## METHOD for every class of MODEL, then the model cards' table: tables/<method>.md
	classes=$$($(PY) data.py --dataset $(DATASET) --data-dir $(DATA_DIR) | sed -n 's/^classes: //p' | wc -w); \
	for c in $$(seq 0 $$((classes - 1))); do \
	  $(PY) unlearn.py $(DATA) --method $(METHOD) --model $(MODEL) --forget-class $$c \
	    --out runs/table-$(METHOD)/$(NAME)_$(METHOD)_$$c.pth || exit 1; \
	done; \
	$(PY) evaluate.py --table $$(seq -f "runs/table-$(METHOD)/$(NAME)_$(METHOD)_%g.json" 0 $$((classes - 1))) --out tables/$(METHOD).md
	cat tables/$(METHOD).md

ensemble: $(VENV)/.installed  ## N members (seeds 0..N-1), JOBS at a time on DEVICES, then the ensemble evaluated
	$(call parallel,$$(seq -f "checkpoints/ensemble/$(NAME)_seed%g.pth" 0 $$(($(N) - 1))))
	$(PY) evaluate.py $(DATA) --ensemble $$(seq -f "--model checkpoints/ensemble/$(NAME)_seed%g.pth" 0 $$(($(N) - 1)))

checkpoints/ensemble/$(NAME)_seed%.pth: | $(VENV)/.installed
	$(PY) train.py $(DATA) --recipe ensemble --epochs $(EPOCHS) --seed $* --out $@ --resume

SISA = $(PY) train.py $(DATA) --sisa --recipe transfer --arch resnet34-imagenet --shards $(SHARDS)
sisa: $(VENV)/.installed  ## SISA 4 shards x 5 slices, ImageNet ResNet34 transfer; shards JOBS at a time on DEVICES
	$(call parallel,$$(seq -f "sisa-shard-%g" 0 $$(($(SHARDS) - 1))))
	$(SISA)

sisa-shard-%: | $(VENV)/.installed
	$(SISA) --shard $*

sisa-unlearn: $(VENV)/.installed  ## SISA unlearning of a random 20% (reuses every unaffected slice checkpoint)
	$(PY) unlearn.py $(DATA) --method sisa --model checkpoints/sisa_$(NAME)_resnet34-imagenet/manifest_full.json \
	  --forget-fraction 0.2

bench: $(VENV)/.installed  ## this project's path vs the plain DataLoader path: images/s side by side (runs/bench.json)
	$(PY) bench.py $(DATA) --arch $(ARCH)

clean-demo:  ## delete runs/demo
	rm -rf runs/demo
