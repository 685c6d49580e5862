# Included by the Makefile before any rule: the variables users type (the Makefile's and
# studies/studies.mk's) that become shell words, paths and make targets. A space (or line
# break), quote or shell character would split or run as a command, a leading - would read as a
# flag, a colon would end a make target. Each is checked here, before make reads a rule (class
# names read from the data: data.py --for-make); a default set after this is the project's. EXTRA,
# TRAIN_FLAGS, EXTRA_<method>, SISA_RECIPE and ENSEMBLE_RECIPE are flags, given to the shell as
# written; PY and PYTHON are commands.
UNSAFE := ; & | ` ' " ( ) < > * ? [ ] { } ! \ $$ \#
HASH := \#
, := ,
WORDS := DATASET DATA_DIR CLASS METHOD ARCH CHECKPOINTS MODEL DEVICE RUNDIR SMALL_RUNDIR \
	CARDS_DIR C100_DIR POOL_DIR ULIRA_DIR VERIFY_DIR SISA_DATASET DEMO_DATASET FRACTION \
	FORGET_FRACTION STAGE COMMIT YES
LISTS := METHODS DEVICES EVERY_CLASS ONE_CLASS RETRAIN  # each word checked as one of WORDS
NUMBERS := N SHARDS JOBS EPOCHS DRAWS POOL  # whole numbers from 1: shell arithmetic, flags
IN_TARGETS := CHECKPOINTS RUNDIR SMALL_RUNDIR ARCH CLASS EVERY_CLASS ONE_CLASS  # no colon
# $(call unsafe,VALUE[,ALLOWED]): what keeps VALUE from being one shell word (empty: nothing);
# ALLOWED: characters let through
unsafe = $(strip $(if $(filter-out 1,$(words x$(1)x)),space) \
	$(if $(filter -%,$(1)),leading-dash) \
	$(foreach c,$(filter-out $(2),$(UNSAFE)),$(findstring $(c),$(1))))
define NEWLINE


endef
shown = $(subst $(NEWLINE),\n,$(1))
nondigits = $(subst 0,,$(subst 1,,$(subst 2,,$(subst 3,,$(subst 4,,$(subst 5,,$(subst \
	6,,$(subst 7,,$(subst 8,,$(subst 9,,$(1)))))))))))
# $(call refuse,WHAT,WHY): stop with one line
refuse = $(error $(call shown,$(1)) $(2): make cannot pass it safely; rename it, or run the \
	scripts directly (python train.py --help))
UNSAFE_WHY = holds a space$(,) a shell character or a leading dash
$(foreach v,$(WORDS),$(if $(call unsafe,$($(v))),$(call \
	refuse,$(v)=$($(v)),$(UNSAFE_WHY) ($(call unsafe,$($(v)))))))
# PRETRAINED may hold the # of its #sha256= pin: it is single-quoted in the recipe, and make
# keeps a # given on its command line or in the environment (only a makefile's own lines lose
# what follows a #)
$(if $(call unsafe,$(PRETRAINED),$(HASH)),$(call \
	refuse,PRETRAINED=$(PRETRAINED),$(UNSAFE_WHY) ($(call unsafe,$(PRETRAINED),$(HASH)))))
$(foreach v,$(LISTS),$(foreach w,$($(v)),$(if $(call unsafe,$(w)),$(call refuse,$(v) holds \
	$(w),with a shell character or a leading dash ($(call unsafe,$(w)))))))
not_number = $(or $(filter-out 1,$(words x$(1)x)),$(filter 0%,$(1)),$(call \
	nondigits,$(1)),$(if $(1),,empty))
# a number given (N= too; a default set below is this file's)
$(foreach v,$(NUMBERS),$(if $(filter-out undefined,$(origin $(v))),$(if $(call \
	not_number,$($(v))),$(error $(call shown,$(v)=$($(v))) is not a whole number from 1: \
	give one$(,) such as $(v)=4))))
$(foreach v,$(IN_TARGETS),$(foreach w,$($(v)),$(if $(findstring :,$(w)),$(call \
	refuse,$(v)=$($(v)),holds a colon (it would end a make target)))))
$(if $(findstring :,$(NAME)),$(call refuse,DATASET=$(DATASET),names make targets $(NAME) and \
	holds a colon (it would end one)))
