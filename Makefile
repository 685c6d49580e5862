# Machine-unlearning recipes for image classifiers. `make help` lists the targets; the studies'
# (reproduce*, report, verify-published*, pool*, ulira*, bench, first-call): studies/studies.mk.
# Variables: DATASET (cifar10 | cifar100 | image folder), DATA_DIR, ARCH, EPOCHS, DEVICE, CLASS, MODEL, METHOD,
# EXTRA (more flags for the scripts, e.g. EXTRA="--subset 100"); JOBS, DEVICES: many models at once (below);
# CHECKPOINTS: the folder of train, retrain, retrain-all and ensemble (default: checkpoints).
# PRETRAINED: the ensemble members' starting weights: torchvision, a path, URL or hf:// name
# (default: the report's, timm's Instagram-1B ResNet18).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The install stamp every target waits for; INSTALL= (empty) runs with PY as it is (the tests do).
INSTALL ?= $(VENV)/.installed
DATASET ?= cifar10
DATA_DIR ?= ./data
ARCH ?= resnet18
EPOCHS ?= 200
DEVICE ?= auto
CLASS ?= cat
METHOD ?= ssd
METHODS ?= $(METHOD)  # pool-unlearn, pool-small: several methods, e.g. METHODS="ssd ct msg"
N ?= 5
CHECKPOINTS ?= checkpoints
SHARDS ?= 4
JOBS ?= 1
DEVICES ?= $(DEVICE)
NAME := $(firstword $(subst ., ,$(notdir $(DATASET))))
MODEL ?= $(CHECKPOINTS)/$(ARCH)_$(NAME)_full.pth
EXTRA ?=
PRETRAINED ?=
PRETRAINED_FLAG = $(if $(PRETRAINED),--pretrained '$(PRETRAINED)')
# beneath the outputs (linear probe, CKA, relearn steps: docs/PRIVACY.md), evaluated in each
# unlearn and eval step of make reproduce and in unlearn-table; PROBE= leaves them out
PROBE ?= --probe
DATA_ARGS = --dataset '$(DATASET)' --data-dir '$(DATA_DIR)'
DATA = $(DATA_ARGS) --device $(DEVICE) $(EXTRA)
include studies/checks.mk  # every variable a user types, checked before make reads a rule
TRAIN_FLAGS ?=
TRAIN = $(PY) train.py $(DATA) --arch $(ARCH) --epochs $(EPOCHS) --resume --wait $(TRAIN_FLAGS)
# The demo uses the real CIFAR-10 images where this project's machines keep them, else downloads CIFAR-10.
DEMO_DATASET ?= $(if $(wildcard ../shared/data/cifar10-jpeg.tar.gz),../shared/data/cifar10-jpeg.tar.gz,cifar10)
DEMO = --dataset $(DEMO_DATASET) --data-dir $(DATA_DIR) --device $(DEVICE) --subset 300 --test-subset 100
DEMO_TRAIN = $(PY) train.py $(DEMO) --arch resnet20 --epochs 4 --batch-size 64 --resume

.PHONY: help install test test-fast demo train retrain retrain-all evaluate unlearn unlearn-table ensemble
.PHONY: sisa sisa-unlearn clean-demo

# $(call parallel,TARGETS): make each target in its own process, JOBS at a time, the k-th on DEVICES[k mod n]
# (`make retrain-all JOBS=4 DEVICES="cuda:0 cuda:1"`: two jobs per GPU). Targets are files or resume, so a rerun
# after an interruption redoes only what is missing.
define parallel
	i=0; for t in $(1); do set -- $(DEVICES); shift $$((i % $$#)); echo "$$t $$1"; i=$$((i + 1)); done | \
	  xargs -P $(JOBS) -L 1 sh -c '$(MAKE) --no-print-directory "$$0" DEVICE="$$1"'
endef

help:  ## this list
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

install: $(VENV)/.installed  ## create .venv and install requirements.txt

test: $(INSTALL) $(if $(INSTALL),$(VENV)/.matplotlib)  ## run the test suite (CPU only, about 10 minutes on 2 cores)
	$(PY) -m pytest

test-fast: $(INSTALL) $(if $(INSTALL),$(VENV)/.matplotlib)  ## the tests not marked slow: about 2.5 minutes on 2 cores
	$(PY) -m pytest -m "not slow"

# matplotlib is optional (report.py's plots); the tests install it so that the plots are tested too
$(VENV)/.matplotlib: $(VENV)/.installed
	$(VENV)/bin/pip install -q matplotlib
	touch $@

demo: $(INSTALL)  ## a few minutes on a CPU: resnet20 on a subset, trained, CLASS retrained, both evaluated
	$(DEMO_TRAIN) --out runs/demo/full.pth
	$(DEMO_TRAIN) --forget-class '$(CLASS)' --out runs/demo/no_$(CLASS).pth
	$(PY) evaluate.py $(DEMO) --model runs/demo/full.pth --retrained runs/demo/no_$(CLASS).pth --forget-class '$(CLASS)' \
	  --mia --json runs/demo/eval.json
	@echo
	@echo "Trained: a resnet20 on 300 images a class for 4 epochs (runs/demo/full.pth), and the same recipe" \
	  "without $(CLASS) (runs/demo/no_$(CLASS).pth, the gold standard of forgetting); evaluations in runs/demo/eval.json."
	@echo "Next, make the full model forget $(CLASS) and compare it with the retrained one:"
	@echo "  $(PY) unlearn.py $(DEMO) --method ssd --full-set retain --model runs/demo/full.pth" \
	  "--retrained runs/demo/no_$(CLASS).pth --forget-class $(CLASS) --out runs/demo/ssd_$(CLASS).pth"

train: $(CHECKPOINTS)/$(ARCH)_$(NAME)_full.pth  ## the full model: 200-epoch recipe on the whole train set

retrain: $(CHECKPOINTS)/$(ARCH)_$(NAME)_no_$(CLASS).pth  ## the gold standard: the recipe without CLASS

# the class list of DATASET, or a stop with one line (data.py has said why above)
CLASS_LIST = classes=$$($(PY) data.py --for-make $(DATA_ARGS) | sed -n 's/^classes: //p'); \
	[ -n "$$classes" ] || { echo "make: no class list for DATASET=$(DATASET); see the error above" >&2; exit 1; }

retrain-all: $(INSTALL)  ## one retrain per class, JOBS at a time on DEVICES (finished ones kept)
	@$(CLASS_LIST); \
	$(call parallel,$$(echo $$classes | sed -E 's|[^ ]+|$(CHECKPOINTS)/$(ARCH)_$(NAME)_no_&.pth|g'))

$(CHECKPOINTS)/$(ARCH)_$(NAME)_full.pth: | $(INSTALL)
	$(TRAIN) --out $@

$(CHECKPOINTS)/$(ARCH)_$(NAME)_no_%.pth: | $(INSTALL)
	$(TRAIN) --forget-class '$*' --out $@

evaluate: $(INSTALL)  ## evaluate MODEL with CLASS forgotten, MIA included
	$(PY) evaluate.py $(DATA) --model $(MODEL) --forget-class $(CLASS) --mia

unlearn: $(INSTALL)  ## unlearn CLASS from MODEL with METHOD -> checkpoints/<dataset>_<arch>_<Method>_<class>.pth
	$(PY) unlearn.py $(DATA) --method $(METHOD) --model $(MODEL) --forget-class $(CLASS)

unlearn-table: $(INSTALL)  ## METHOD for every class of MODEL, then the model cards' table: tables/<method>.md
	@$(CLASS_LIST); classes=$$(echo $$classes | wc -w); \
	for c in $$(seq 0 $$((classes - 1))); do \
	  $(PY) unlearn.py $(DATA) --method $(METHOD) --model $(MODEL) --forget-class $$c $(PROBE) \
	    --out runs/table-$(METHOD)/$(NAME)_$(METHOD)_$$c.pth || exit 1; \
	done; \
	$(PY) evaluate.py --table $$(seq -f "runs/table-$(METHOD)/$(NAME)_$(METHOD)_%g.pth" 0 $$((classes - 1))) --out tables/$(METHOD).md
	cat tables/$(METHOD).md

ensemble: $(INSTALL)  ## N members (seeds 0..N-1), JOBS at a time on DEVICES, then the ensemble evaluated
	$(call parallel,$$(seq -f "$(CHECKPOINTS)/ensemble/$(NAME)_seed%g.pth" 0 $$(($(N) - 1))))
	$(PY) evaluate.py $(DATA) --ensemble $$(seq -f "--model $(CHECKPOINTS)/ensemble/$(NAME)_seed%g.pth" 0 $$(($(N) - 1)))

$(CHECKPOINTS)/ensemble/$(NAME)_seed%.pth: | $(INSTALL)
	$(PY) train.py $(DATA) --recipe ensemble $(PRETRAINED_FLAG) --epochs $(EPOCHS) --seed $* \
	  --out $@ --resume

SISA = $(PY) sisa.py train $(DATA) --recipe transfer --arch resnet34-imagenet --shards $(SHARDS)
sisa: $(INSTALL)  ## SISA 4 shards x 5 slices, ImageNet ResNet34 transfer; shards JOBS at a time on DEVICES
	$(call parallel,$$(seq -f "sisa-shard-%g" 0 $$(($(SHARDS) - 1))))
	$(SISA)

sisa-shard-%: | $(INSTALL)
	$(SISA) --shard $*

sisa-unlearn: $(INSTALL)  ## SISA unlearning of a random 20% (reuses every unaffected slice checkpoint)
	$(PY) sisa.py unlearn $(DATA) --model checkpoints/sisa_$(NAME)_resnet34-imagenet/manifest_full.json \
	  --forget-fraction 0.2

clean-demo:  ## delete runs/demo
	rm -rf runs/demo

include studies/studies.mk
