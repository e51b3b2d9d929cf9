# Two commands for a fresh machine (Python 3.11): `make repro` rebuilds the results, `make test` tests.
# Both create .venv on first use, install the exact pins of requirements.txt (each file checked against its sha256) and
# the project, and reuse the venv afterwards (it is reinstalled when requirements.txt or pyproject.toml change). `make`
# alone, or `make help`, lists the targets: each target's line ends with `## <what it does>`, which `help` prints.
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed

# Stage commands in dvc.yaml call `python`: make it the venv's.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: help venv repro test lint metrics exps plots schema report-check audit profile plan rehearse cluster cluster-status cluster-cancel lock
# `make` with no target lists the targets (nothing uses it to build: CI and the docs name their targets)
.DEFAULT_GOAL := help

# The variables a target pastes into its shell commands (PROFILE, STAGE, TARGETS, SET, ARGS, JOBS, FORCE, PYTHON) are
# checked by make itself, before any command that holds one runs: a value of another shape (a quote, `;`, `$`, a
# backquote, a newline...) stops make with one line naming the variable, its value and what is expected. The raw text
# is checked ($(value ...): a `$(shell ...)` in it is never expanded); an empty variable passes, so a target's own
# usage line still answers it. A variable is checked only for the targets that use it (checked.<target> below): a
# PROFILE in the environment does not stop `make help`.
empty :=
space := $(empty) $(empty)
tab := $(empty)	$(empty)
define newline


endef
alnum := a b c d e f g h i j k l m n o p q r s t u v w x y z A B C D E F G H I J K L M N O P Q R S T U V W X Y Z \
	0 1 2 3 4 5 6 7 8 9
name-chars := $(alnum) _ -
set-chars := $(name-chars) . = , [ ] : +
args-chars := $(name-chars) . = , / :
# $(call strip-chars,CHARS,TEXT): TEXT without any of CHARS (a list of single characters)
strip-chars = $(if $1,$(call strip-chars,$(wordlist 2,$(words $1),$1),$(subst $(firstword $1),,$2)),$2)
# $(call bad.VAR,VALUE): empty when VALUE has VAR's shape. `-x` first would be read as an option.
bad.PROFILE = $(call strip-chars,$(name-chars),$1)$(filter -%,$1)
# $(call many-at,VALUE): VALUE's @ if it has more than one
many-at = $(filter-out @,$(call strip-chars,$(name-chars) .,$1))
bad.STAGE = $(call strip-chars,$(name-chars) . @,$1)$(filter -%,$1)$(call many-at,$1)
bad.TARGETS = $(call strip-chars,$(name-chars) . @,$(subst $(space),,$1))$(strip $(foreach w,$1,$(call bad.STAGE,$w)))
bad.JOBS = $(call strip-chars,0 1 2 3 4 5 6 7 8 9,$1)$(if $(subst 0,,$1),,0)
bad.FORCE = $(if $(filter 0 1,$1),$(call strip-chars,0 1,$1),$1)
bad.SET = $(call strip-chars,$(set-chars),$(subst $(space),,$1))$(strip $(foreach w,$1,$(if $(findstring =,$w),,$w)))
bad.ARGS = $(call strip-chars,$(args-chars),$(subst $(space),,$1))
bad.PYTHON = $(call strip-chars,$(name-chars) . / +,$1)
expect.PROFILE := a profile name, profiles/<name>.yaml (letters, digits, _ and -; not - first), e.g. PROFILE=cifar
expect.STAGE := a stage instance name (letters, digits, _ - . and one @; not - first), \
	e.g. STAGE=finetune@n12-sne-digits-0
expect.TARGETS := stage or instance names separated by spaces (each letters, digits, _ - . and one @; not - first), \
	e.g. TARGETS='pretrain finetune@n12-sne-digits-0'
expect.JOBS := a positive integer, e.g. JOBS=4
expect.FORCE := nothing, 0 or 1, e.g. FORCE=1
expect.SET := key.path=value items separated by spaces, of letters, digits and _ - . = , [ ] : +, \
	e.g. SET='pretrain.recipe.epochs=3 seeds=[0]'
expect.ARGS := options of pipeline.stages.plan: letters, digits, spaces and _ - . = , / :, \
	e.g. ARGS='--img-per-s 2500 --nodes 2'
expect.PYTHON := a Python command or path (letters, digits and _ - . / +), e.g. PYTHON=python3.11
# $(call check,VAR ...): nothing, or stop make naming the first bad variable (a tab or newline in it shown as \t, \n)
check = $(foreach v,$1,$(if $(value $v),$(if $(call bad.$v,$(value $v)),$(error \
	$v='$(subst $(newline),\n,$(subst $(tab),\t,$(value $v)))': expected $(expect.$v)))))
# The variables each target's commands hold (the venv stamp's: when it builds the venv)
checked.repro := JOBS
checked.profile := PROFILE FORCE
checked.plan := PROFILE ARGS
checked.rehearse := PROFILE SET
checked.cluster := PROFILE TARGETS
checked.cluster-status := TARGETS
checked.audit := STAGE
checked.venv := PYTHON
checked.lock := PYTHON
checked.$(STAMP) := PYTHON
# $(checked-vars), a recipe's first line, checks its target's variables: make expands all the lines of a recipe before
# it runs the first, whichever way the target was reached. The goals' are also checked now, as make starts: a bad
# value stops it before anything is built (the venv a goal needs included).
checked-vars = $(call check,$(checked.$@))
$(foreach g,$(MAKECMDGOALS),$(call check,$(checked.$g)))

# Needs nothing but make and awk: no venv, works on a fresh clone.
help: ## list the targets (this list; the default goal)
	@echo 'usage: make <target> [VARIABLE=value ...]   (a target that runs the code creates .venv on first use)'
	@awk -F ':.*## ' '/^[A-Za-z0-9_.-]+:.*## / { printf "  %-15s %s\n", $$1, $$2 }' $(firstword $(MAKEFILE_LIST))

$(STAMP): requirements.txt pyproject.toml
	$(checked-vars)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --requirement requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation --editable .
	@touch $@

venv: $(STAMP) ## create .venv (PYTHON=python3.11) with requirements.txt's pins and the project

# The params are checked (every stage's loader, every instance, the qkv library's checks included) before DVC
# runs anything: a bad file fails here in seconds instead of in the middle of a repro.
# N stage instances at once (runtime.jobs of params.yaml, or JOBS=N), each in its own slot of the machine
# (pipeline/cluster/pool.py): one per GPU group on a multi-GPU machine, runtime.threads cores each on a CPU; one
# at a time is a plain `dvc repro`.
repro: $(STAMP) ## [JOBS=N] check params.yaml, then rebuild every result that is not up to date, N instances at once
	$(checked-vars)
	python -m pipeline.profile --check params.yaml
	python -m pipeline.cluster.pool $(if $(JOBS),--jobs $(JOBS))

lint: $(STAMP) ## ruff check and ruff format --check of qkv pipeline tests tools
	ruff check qkv pipeline tests tools
	ruff format --check qkv pipeline tests tools

schema: $(STAMP) ## regenerate params.schema.json, the JSON Schema editors check params files with
	python -m pipeline.params_schema

# The tests spread over the CPU cores (pytest-xdist; at most 4 workers: many tests start several processes each),
# test by test as workers free up (worksteal: the slowest tests take minutes). `pytest tests/<file>` runs serially.
test: lint ## lint, every test (pytest on every core, at most 4 workers), then report-check
	pytest --numprocesses=auto --maxprocesses=4 --dist=worksteal
	$(MAKE) report-check

# Rebuild the report from the result files committed at HEAD (no training) and check it comes out byte-identical
# to the report committed at HEAD. It checks HEAD only: it runs in a temporary git worktree, so uncommitted changes
# (results that `make repro` rewrote on this machine, edited code or reports) are neither used nor checked; commit
# them to check them.
report-check: $(STAMP) ## rebuild the report from HEAD's committed results: byte-identical to HEAD's?
	bash tools/report_check.sh

# Make profiles/$(PROFILE).yaml the active params.yaml (validated first): embedded, cifar or paper. A params.yaml
# holding edits that are in no profile is left alone (the changed keys named) unless FORCE=1; the new profile's
# dataset roots missing on this machine are listed.
profile: $(STAMP) ## PROFILE=<embedded|cifar|paper> [FORCE=1]: profiles/<PROFILE>.yaml to params.yaml (FORCE=1: even over edits)
	$(checked-vars)
	@test -n "$(PROFILE)" || { echo "usage: make profile PROFILE=<embedded|cifar|paper> [FORCE=1]" >&2; exit 2; }
	python -m pipeline.profile "$(PROFILE)"$(if $(filter-out 0,$(FORCE)), --force)

# The cost plan of profiles/$(PROFILE).yaml (a rehearsal's params: the real profile): images, FLOPs, device-hours,
# wall time, disk and input pipeline of every training stage, without its data. Reads nothing but the profile,
# references/compute.yaml and the bench's measurements (used when taken for that profile on its device).
plan: $(STAMP) ## PROFILE=<name> [ARGS='--img-per-s 2500 --nodes 2']: cost plan of profiles/<PROFILE>.yaml
	$(checked-vars)
	@test -n "$(PROFILE)" || { echo "usage: make plan PROFILE=<embedded|cifar|paper> [ARGS='--img-per-s 2500 --nodes 2']"; exit 2; }
	python -m pipeline.stages.plan --params profiles/$(PROFILE).yaml --bench results/bench/metrics.json $(ARGS)

# Run a GPU profile's whole DAG on this CPU in .rehearsal/$(PROFILE) (size and data overrides only, printed first;
# stand-in datasets in the real formats); fails naming the stage, file or claim a real run would trip on.
# SET="key=value ..." adds size overrides.
rehearse: $(STAMP) ## PROFILE=<cifar|paper> [SET='key=value ...']: a GPU profile's whole DAG on this CPU
	$(checked-vars)
	@test -n "$(PROFILE)" || { echo "usage: make rehearse PROFILE=<cifar|paper> [SET='pretrain.recipe.epochs=3']"; exit 2; }
	python -m pipeline.review.rehearse "$(PROFILE)" $(foreach s,$(SET),--set "$(s)")

# Run the instances of the DAG that are not up to date as cluster jobs (pipeline/cluster/commands.py, the cluster section of
# params.yaml): one submitit job each, in dependency order, each `dvc --wait-for-lock repro --single-item <instance>`.
# PROFILE=<name> makes profiles/<name>.yaml the active params.yaml first (validated); TARGETS="pretrain ..." limits the
# jobs to those stages or instances and what they need. Watch with `make cluster-status`, stop with `make cluster-cancel`.
cluster: $(STAMP) ## [PROFILE=<name>] [TARGETS='stage-or-instance ...']: submit the stale instances as jobs
	$(checked-vars)
	@if [ -n "$(PROFILE)" ]; then python -m pipeline.profile "$(PROFILE)"; else python -m pipeline.profile --check params.yaml; fi
	python -m pipeline.cluster submit $(TARGETS)

cluster-status: $(STAMP) ## [TARGETS='stage-or-instance ...']: every instance's state and its last job
	$(checked-vars)
	python -m pipeline.cluster status $(TARGETS)

cluster-cancel: $(STAMP) ## cancel every queued or running cluster job of ours
	python -m pipeline.cluster cancel

# DVC's own views of the results: metrics.json of every training run and the report's headline are DVC metrics;
# provenance and the runs' records are declared as plots that draw nothing (dvc.yaml says why).
metrics: $(STAMP) ## the headline (each variant against linear), then every metric that differs from HEAD's (this run vs the committed one)
	dvc metrics show reports/headline.json --md
	dvc metrics diff --md

exps: $(STAMP) ## dvc exp show: params and metrics of the workspace, HEAD and each experiment, the columns that differ
	dvc exp show --only-changed --md

plots: $(STAMP) ## dvc plots show: training curves, the FLOPs table and the bench timings (dvc_plots/index.html)
	dvc plots show

# Re-run one stage instance in a scratch copy and compare it with dvc.lock and the committed metrics.
audit: $(STAMP) ## STAGE=<instance, e.g. finetune@n12-sne-digits-0>: re-run it in a scratch copy, compare
	$(checked-vars)
	@test -n "$(STAGE)" || { echo "usage: make audit STAGE=<stage instance, e.g. finetune@n12-sne-digits-0>"; exit 2; }
	python -m pipeline.review.audit "$(STAGE)"

# Re-resolve requirements.in (the direct dependencies, pyproject.toml's with their tested versions) into
# requirements.txt: every package pinned exactly, with the sha256 of each file PyPI has for that version (any platform:
# `make` installs with --require-hashes) and environment markers (the CUDA wheels torch pulls are Linux-only), resolved
# by uv for Python 3.11 on any platform, in a throwaway venv. Needs the package registry; not part of repro or test.
# uv keeps the versions requirements.txt already pins (its preferences): to move one, change it in requirements.in.
lock: ## [PYTHON=python3.11] re-resolve requirements.in into requirements.txt: pins, sha256 hashes, markers (registry)
	$(checked-vars)
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet uv==0.13.9
	.lock-venv/bin/uv pip compile --quiet --universal --generate-hashes --python-version 3.11 \
	  --custom-compile-command 'make lock' --output-file requirements.txt requirements.in
	rm -rf .lock-venv
