# The studies' targets, included at the end of the Makefile (its variables, checked in
# studies/checks.mk, and its rules are theirs too): the cards and reports reproduced, the published
# checkpoints verified, pools and U-LiRA, bench, the first GPU call. Each script runs as
# `python -m studies.X` from the checkout, where make runs.
.PHONY: bench reproduce reproduce-small reproduce-steps reproduce-pool report first-call
.PHONY: verify-published verify-published-small reproduce-c100 reproduce-c100-small
.PHONY: reproduce-cards reproduce-cards-small reproduce-cards-train
.PHONY: pool pool-unlearn pool-score pool-jobs pool-unlearn-jobs pool-small
.PHONY: ulira ulira-retrain ulira-jobs ulira-unlearn-jobs ulira-small
VERIFY_DIR ?= runs/verify-published

bench: $(INSTALL)  ## this project's path vs the plain DataLoader path: images/s side by side (runs/bench.json)
	$(PY) -m studies.bench $(DATA) --arch $(ARCH)

# ----------------------------------------------------------------------------- the cards' proof
# One 200-epoch ResNet18 (trained, or MODEL= a path or hf:// name), SSD (both D) and AdvNegGrad for every class,
# several jobs at once, RETRAIN="cat" adds retrains: CARDS_DIR/cards.md beside the published numbers. A GPU machine
# without network: `make reproduce-cards PY=python3 INSTALL= DATASET=data/cifar10-jpeg.tar.gz` (the archive copied
# into the checkout's ignored data/ folder; COMMIT=<hash> names the commit where the copy has no .git).
# In two GPU commands of at most 10 minutes each: `make reproduce-cards-train ...`, then
# `make reproduce-cards ...` with the same variables (it reuses the trained model).
# Predicted on one H100, not measured: 7-11 minutes in all; 4-7, then 3-5 in two.
CARDS_DIR ?= runs/cards
RETRAIN ?=
COMMIT ?=
CARDS_FLAGS = $(if $(filter command line environment,$(origin MODEL)),--model $(MODEL)) \
	$(if $(RETRAIN),--retrain $(RETRAIN)) $(if $(COMMIT),--commit $(COMMIT))
reproduce-cards: $(INSTALL)  ## the SSD and AdvNegGrad cards from one ResNet18: CARDS_DIR/cards.md
	$(PY) -m studies.reproduce_cards $(DATA) --arch $(ARCH) --epochs $(EPOCHS) --out $(CARDS_DIR) $(CARDS_FLAGS)

reproduce-cards-train: $(INSTALL)  ## the first stage alone: CARDS_DIR/full.pth
	$(PY) -m studies.reproduce_cards $(DATA) --arch $(ARCH) --epochs $(EPOCHS) --out $(CARDS_DIR) \
	  $(CARDS_FLAGS) --stage train

reproduce-cards-small: $(INSTALL)  ## the same on a CPU (resnet20, 20 images a class, 2 epochs): a pipeline check
	$(PY) -m studies.reproduce_cards --dataset $(DEMO_DATASET) --data-dir $(DATA_DIR) --device cpu --arch resnet20 --epochs 2 \
	  --subset 20 --test-subset 20 --train-flags "--batch-size 32" --out $(CARDS_DIR)-small $(CARDS_FLAGS)

# ----------------------------------------------------------------------------- the first GPU call
# One command within 9.5 minutes (studies/first_call.py): versions, the data decoded, 3 epochs
# eager and 3 compiled, the cards' pipeline on a 15-epoch ResNet18 for cat and dog, each step under
# its own time limit; OUT gets log.txt, results.json, cards.md and work.tar.gz. On the GPU machine:
# `make first-call PY=python3 INSTALL= DATASET=data/cifar10-jpeg.tar.gz COMMIT=<hash> OUT=$OUT`
# (docs/SPEED.md). EXTRA: its flags (--epochs, --classes, --limit STEP=SECONDS, --subset ...).
# OUT is checked as WORDS are, but only for this target: the GPU machine's environment sets it.
OUT ?= runs/first-call/out
$(if $(filter first-call,$(MAKECMDGOALS)),$(if $(call unsafe,$(OUT)),$(call \
	refuse,OUT=$(OUT),$(UNSAFE_WHY) ($(call unsafe,$(OUT))))))
first-call: $(INSTALL)  ## the first GPU call: versions, timed epochs, the cards for 2 classes
	$(PY) -m studies.first_call $(DATA_ARGS) --device $(DEVICE) --arch $(ARCH) --out '$(OUT)' \
	  $(if $(COMMIT),--commit $(COMMIT)) $(EXTRA)

# ----------------------------------------------------------------------------- the CIFAR-100 report
# Fine-tuning from the report's published ResNet32 / ResNet56 (chenyaofo/pytorch-cifar-models), SISA 4 x 5, its forget
# set (positions 20000-29999 of the order SISA's shards cut): C100_DIR/c100.md beside the report's numbers.
C100_DIR ?= runs/c100
reproduce-c100: $(INSTALL)  ## the CIFAR-100 report: fine-tuning from its published ResNets, SISA (GPU; network once)
	$(PY) -m studies.reproduce_c100 --data-dir '$(DATA_DIR)' --device $(DEVICE) --out $(C100_DIR) $(EXTRA)

reproduce-c100-small: $(INSTALL)  ## the same on a CPU: 5 images a class, 1 epoch, SISA with a resnet20
	$(PY) -m studies.reproduce_c100 --data-dir '$(DATA_DIR)' --device cpu --out $(C100_DIR)-small --subset 5 --test-subset 5 \
	  --forget-positions 200:300 --epochs 1 --sisa-flags "--arch resnet20 --batch-size 32 --slice-epochs 1,1,1,1,1" \
	  $(EXTRA)

# ----------------------------------------------------------------------------- every published result
# Each step is a file under RUNDIR, so an interrupted run resumes where it stopped and finished models are reused.
# EVERY_CLASS methods run for every class (the model cards' tables), ONE_CLASS methods for CLASS only.
RUNDIR ?= runs/reproduce
EVERY_CLASS ?= ssd advneggrad finetune
ONE_CLASS ?= neggrad+ ga rl salun scrub lfssd ct msg bad-teacher unsir amnesiac l1-sparse boundary-shrink \
	boundary-expand
SISA_DATASET ?= cifar100
SISA_RECIPE ?= --recipe transfer --arch resnet34-imagenet
ENSEMBLE_RECIPE ?= --recipe ensemble $(PRETRAINED_FLAG)
FORGET_FRACTION ?= 0.2
CLASSES = $(shell $(PY) data.py --for-make $(DATA_ARGS) | sed -n 's/^classes: //p')
SEEDS = $(shell seq 0 $$(($(N) - 1)))
R = $(RUNDIR)
SISA_DATA = --dataset $(SISA_DATASET) --data-dir $(DATA_DIR) --device $(DEVICE) $(EXTRA)
STEPS = $(R)/full.pth $(foreach c,$(CLASSES),$(R)/no_$(c).pth $(foreach m,$(EVERY_CLASS),$(R)/unlearn/$(m)/$(c).pth)) \
	$(foreach m,$(ONE_CLASS),$(R)/unlearn/$(m)/$(CLASS).pth) $(R)/eval_$(CLASS).json $(R)/sisa/eval.json \
	$(R)/ensemble/eval.json

reproduce: $(INSTALL)  ## every published result (GPU: hours on a CPU, where it wants YES=1), then the report
	@$(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())" || [ "$(YES)" = 1 ] || { echo \
	  "make reproduce trains 16 ResNet18s and 20 SISA slices: hours on a CPU. Run it on a GPU, or here with YES=1;" \
	  "make reproduce-small is the CPU version (about 10 minutes on 2 cores)"; exit 1; }
	$(MAKE) --no-print-directory reproduce-steps
	$(if $(POOL),$(MAKE) --no-print-directory reproduce-pool)
	$(MAKE) --no-print-directory report

# POOL=N: also a pool of N seeds for CLASS, every method of the run from each original, scored (the report's pools)
POOL ?=
POOL_RUN = N=$(POOL) POOL_DIR=$(R)/pools/$(NAME)_$(ARCH)_$(CLASS)
reproduce-pool: $(INSTALL)
	$(MAKE) --no-print-directory pool $(POOL_RUN)
	for m in $(EVERY_CLASS) $(ONE_CLASS); do $(MAKE) --no-print-directory pool-unlearn METHOD=$$m $(POOL_RUN) || exit 1; done
	$(MAKE) --no-print-directory pool-score $(POOL_RUN)

SMALL = RUNDIR=$(SMALL_RUNDIR) DATASET=$(DEMO_DATASET) ARCH=resnet20 EPOCHS=4 TRAIN_FLAGS="--batch-size 64" \
	DEVICE=cpu EXTRA="--subset 100 --test-subset 100" SISA_DATASET=$(DEMO_DATASET) SISA_RECIPE="--arch resnet20 \
	--batch-size 32 --slice-epochs 2,2,1,1,1" ENSEMBLE_RECIPE="--arch resnet20 --epochs 4 --batch-size 64" \
	EXTRA_finetune="--epochs 2" EXTRA_neggradplus="--epochs 2" EXTRA_rl="--epochs 2" EXTRA_salun="--epochs 2" \
	PROBE=$(SMALL_PROBE)
SMALL_RUNDIR ?= runs/reproduce-small
SMALL_PROBE ?=  # the CPU toy leaves --probe out (relearn time would add minutes a step); --probe puts it in
reproduce-small: $(INSTALL)  ## the same with resnet20 on a CIFAR-10 subset, on a CPU in under 15 minutes
	OMP_NUM_THREADS=1 $(MAKE) --no-print-directory -j$$(nproc) reproduce-steps $(SMALL)  # one core a job
	$(MAKE) --no-print-directory report RUNDIR=$(SMALL_RUNDIR)

# STEPS is named in a recipe, not as prerequisites, so that the class list (data.py) is read only when needed
reproduce-steps: $(INSTALL)
	$(if $(strip $(CLASSES)),,$(error no class list for DATASET=$(DATASET): data.py said why above))
	$(MAKE) --no-print-directory $(STEPS)

.SECONDEXPANSION:

report: $(INSTALL)  ## the Markdown report, plots and model cards of RUNDIR (from its JSON sidecars)
	$(PY) report.py $(RUNDIR)

# The published checkpoints (hf://, downloaded once into torch's hub cache) against their cards, and our SSD on the
# published original against the published SSD models: VERIFY_DIR/report.md. Needs network access the first time.
verify-published: $(INSTALL)  ## the 31 published checkpoints against their cards, our SSD against theirs (GPU advised)
	$(PY) -m studies.verify_published $(DATA) --out $(VERIFY_DIR)

verify-published-small: $(INSTALL)  ## the same on a CPU: the first 100 test and 100 train images of each class
	$(PY) -m studies.verify_published $(DATA) --test-subset 100 --subset 100 --out $(VERIFY_DIR)-small

# ----------------------------------------------------------------------------- pools: did it really forget?
# privacy.py jobs lists a pool's commands (which models, their flags, seeds and file names: see its
# --help), a finished model or outputs file left out; each target below runs them a stage at a time
# (models, unlearn, outputs: a stage's inputs come from the stages before it), JOBS at once, the
# i-th of a stage on DEVICES[i mod n]. A seed pool: POOL_DIR/original/s<k>.pth and
# POOL_DIR/retrain/s<k>.pth (training seeds k = 0..N-1), POOL_DIR/<method>/s<k>.pth from
# original/s<k>.pth, each with its outputs s<k>.npz; FRACTION=0.1 forgets a seeded random 10%
# instead of CLASS. The *-jobs targets print the commands (every stage in order; STAGE=models,
# unlearn or outputs: one stage, whose commands can run at once) for xargs or a SLURM array.
FRACTION ?=
STAGE ?=
POOL_FORGET = $(if $(FRACTION),--forget-fraction $(FRACTION),--forget-class $(CLASS))
POOL_DIR ?= runs/pools/$(NAME)_$(ARCH)_$(if $(FRACTION),random$(FRACTION),$(CLASS))
quote = '$(subst ','\'',$(1))'
# $(call jobs,POOL AND GROUPS): privacy.py jobs with this run's settings
jobs = $(PY) -m studies.privacy jobs $(1) --n $(N) --python $(call quote,$(PY)) \
	$(if $(strip $(DEVICES)),--devices $(DEVICES)) \
	--train-flags=$(call quote,--arch $(ARCH) --epochs $(EPOCHS) $(TRAIN_FLAGS)) \
	--unlearn-flags=$(call quote,$(EXTRA_$(subst +,plus,$(METHOD)))) -- $(DATA_ARGS) $(EXTRA)
# $(call run_jobs,POOL AND GROUPS): its commands stage by stage, each printed, JOBS at a time
define run_jobs
	for stage in models unlearn outputs; do \
	  lines=$$($(call jobs,$(1) --stage $$stage)) || exit 1; \
	  [ -z "$$lines" ] || { printf '%s\n' "$$lines"; \
	    printf '%s\n' "$$lines" | xargs -d '\n' -P $(JOBS) -I{} sh -c {}; } || exit 1; \
	done
endef
SEED_POOL = $(call quote,$(POOL_DIR)) $(POOL_FORGET)

pool: $(INSTALL)  ## N originals and N retrains without CLASS (or FRACTION), seeds 0..N-1, JOBS at a time on DEVICES
	$(call run_jobs,$(SEED_POOL) --groups original retrain)

# each method in turn; a variable, so that the recipe line does not name $(MAKE): make runs
# such a line under -n, and the line's other branch would run the jobs of a dry run
EACH_METHOD = for m in $(METHODS); do \
	$(MAKE) --no-print-directory pool-unlearn METHODS=$$m METHOD=$$m || exit 1; done
pool-unlearn: $(INSTALL)  ## METHOD (or METHODS="ssd ct ...") from each original of the pool, JOBS at a time
	$(if $(word 2,$(METHODS)),$(EACH_METHOD),$(call run_jobs,$(SEED_POOL) --groups $(METHODS)))

pool-score: $(INSTALL)  ## the competition score, KLOM, U-LiRA and the seed spread of every group: POOL_DIR/scores.json
	$(PY) -m studies.privacy score $(call quote,$(POOL_DIR))

pool-jobs:  ## the pool's commands, one a line, for xargs or a SLURM array (STAGE=: one stage)
	@$(call jobs,$(SEED_POOL) --groups original retrain $(if $(STAGE),--stage $(STAGE)))

pool-unlearn-jobs:  ## METHOD's commands, one a line (its originals' trainings first where missing)
	@$(call jobs,$(SEED_POOL) --groups $(METHOD) $(if $(STAGE),--stage $(STAGE)))

POOL_SMALL = DATASET=$(DEMO_DATASET) ARCH=resnet20 EPOCHS=3 N=8 TRAIN_FLAGS="--batch-size 64" DEVICE=cpu \
	EXTRA="--subset 50 --test-subset 50" RUNDIR=runs/pool-small POOL_DIR=runs/pool-small/pools/$(CLASS)
pool-small: $(INSTALL)  ## a toy pool on a CPU (resnet20, N = 8, METHOD or METHODS), its scores and report
	OMP_NUM_THREADS=1 $(MAKE) --no-print-directory pool pool-unlearn JOBS=$$(nproc) $(POOL_SMALL)
	$(MAKE) --no-print-directory pool-score report $(POOL_SMALL)

# ----------------------------------------------------------------------------- U-LiRA's own design: random halves
# ULIRA_DIR/original/h<k>.pth trained on the random half k of the train set (k = 0..N-1),
# ULIRA_DIR/<method>/h<k>_f<j>.pth that model after forgetting the random forget set j (FRACTION of the half, default 0.1; j = 0..DRAWS-1),
# ULIRA_DIR/retrain/h<k>_f<j>.pth the half without that forget set (the ceiling); each with its outputs .npz.
DRAWS ?= 4
ULIRA_FRACTION = $(or $(FRACTION),0.1)
ULIRA_DIR ?= runs/pools/$(NAME)_$(ARCH)_halves$(ULIRA_FRACTION)
HALVES_POOL = $(call quote,$(ULIRA_DIR)) --halves --draws $(DRAWS) \
	--forget-fraction $(ULIRA_FRACTION)

ulira: $(INSTALL)  ## U-LiRA: N originals on random halves, METHOD on DRAWS forget sets of each, scored (JOBS, DEVICES)
	$(call run_jobs,$(HALVES_POOL) --groups original $(METHOD))
	$(PY) -m studies.privacy score $(call quote,$(ULIRA_DIR))

ulira-retrain: $(INSTALL)  ## the ceiling of `make ulira`: each half retrained without each forget set (N x DRAWS)
	$(call run_jobs,$(HALVES_POOL) --groups retrain)
	$(PY) -m studies.privacy score $(call quote,$(ULIRA_DIR))

ulira-jobs:  ## `make ulira`'s originals and the ceiling's retrains, one command a line (STAGE=)
	@$(call jobs,$(HALVES_POOL) --groups original retrain $(if $(STAGE),--stage $(STAGE)))

ulira-unlearn-jobs:  ## METHOD's commands of `make ulira`, one a line (its originals first)
	@$(call jobs,$(HALVES_POOL) --groups $(METHOD) $(if $(STAGE),--stage $(STAGE)))

# the toy's models must remember their images for a membership test to see anything: 50 images, 30 epochs
ULIRA_SMALL = DATASET=$(DEMO_DATASET) ARCH=resnet20 EPOCHS=30 N=8 DRAWS=2 FRACTION=0.5 \
	TRAIN_FLAGS="--batch-size 16 --lr 0.05" DEVICE=cpu EXTRA="--subset 10 --test-subset 20" \
	ULIRA_DIR=runs/pool-small/pools/halves METHOD=$(METHOD)
ulira-small: $(INSTALL)  ## a toy U-LiRA on a CPU (resnet20, 8 halves x 2 forget sets of half of each), with its ceiling
	OMP_NUM_THREADS=1 $(MAKE) --no-print-directory ulira ulira-retrain JOBS=$$(nproc) $(ULIRA_SMALL)
	$(MAKE) --no-print-directory report RUNDIR=runs/pool-small

$(R)/full.pth: | $(INSTALL)
	$(TRAIN) --out $@

$(R)/no_%.pth: | $(INSTALL)
	$(TRAIN) --forget-class '$*' --out $@

# unlearn/<method>/<class>.pth: the method from the full model, evaluated beside the retrained one
$(R)/unlearn/%.pth: $(R)/full.pth $(R)/no_$$(notdir $$*).pth
	$(PY) unlearn.py $(DATA) --method $(*D) --wait --model $< --retrained $(R)/no_$(*F).pth --forget-class '$(*F)' \
	  --out $@ $(EXTRA_$(subst +,plus,$(*D))) $(PROBE)

# every model of CLASS side by side, with the forget sets' per-example losses (the report's plots)
$(R)/eval_%.json: $(R)/full.pth $(R)/no_%.pth $$(foreach m,$$(EVERY_CLASS) $$(ONE_CLASS),$(R)/unlearn/$$(m)/$$*.pth)
	$(PY) evaluate.py $(DATA) --retrained $(R)/no_$*.pth $(addprefix --model ,$(R)/full.pth $(filter $(R)/unlearn/%,$^)) \
	  --forget-class '$*' --mia --losses --json $@ $(if $(PROBE),$(PROBE) --original $(R)/full.pth)

$(R)/sisa/manifest_full.json: | $(INSTALL)
	$(PY) sisa.py train $(SISA_DATA) $(SISA_RECIPE) --out $(R)/sisa

$(R)/sisa/unlearned.json: $(R)/sisa/manifest_full.json
	$(PY) sisa.py unlearn $(SISA_DATA) --model $< --forget-fraction $(FORGET_FRACTION) --out $@ --no-eval

$(R)/sisa/eval.json: $(R)/sisa/manifest_full.json $(R)/sisa/unlearned.json
	$(PY) evaluate.py $(SISA_DATA) $(addprefix --model ,$^) --forget-fraction $(FORGET_FRACTION) --mia --json $@

$(R)/ensemble/seed%.pth: | $(INSTALL)
	$(PY) train.py $(DATA) $(ENSEMBLE_RECIPE) --seed $* --out $@ --resume

$(R)/ensemble/eval.json: $$(foreach k,$$(SEEDS),$(R)/ensemble/seed$$(k).pth)
	$(PY) evaluate.py $(DATA) --ensemble $(addprefix --model ,$^) --json $@
