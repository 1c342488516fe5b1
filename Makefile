# The two commands of the course:  make book  and  make test  (see README.md).
# Both create .venv at the repository root when it is missing; nothing needs activating.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rl4lmt-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: book test lint venv clean-book model sft-model reward-model process-reward-model rlhf-models exercises bench chromium

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

## make book: build the whole book, every chapter executed (cached), warnings are errors.
book: $(STAMP)
	$(VENV)/bin/jupyter-book build . -W --keep-going

## make test: lint, then the whole test suite (builds the book first: browser and leak tests read it).
## Two pytest workers (one per core); --dist loadfile keeps each file's module fixtures in one worker.
PYTEST_WORKERS ?= 2
test: lint book chromium
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile

## make lint: ruff over the package, the tests and the benchmarks (rules in pyproject's [tool.ruff];
## the book's pages are MyST Markdown and are not linted).
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

## make chromium: Debian's Chromium for tests/test_browser.py, installed with apt-get where it
## is missing (CI runs as root). Where it cannot be installed the browser test is skipped, loudly;
## under CI (RL4LMT_CI=1, set by .ci/run) this target fails instead, with the reason.
CHROMIUM ?= chromium
chromium:
	@command -v $(CHROMIUM) >/dev/null 2>&1 || { why=; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make chromium: installing Debian's chromium for the browser test"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	      || why="apt-get could not install chromium"; \
	  else \
	    why="chromium is missing and cannot be installed here (needs root and apt-get)"; \
	  fi; \
	  if [ -n "$$why" ]; then \
	    if [ -n "$${RL4LMT_CI:-}" ] && [ "$${RL4LMT_CI}" != 0 ]; then \
	      echo "make chromium: ERROR (CI): $$why: the browser test cannot run" >&2; exit 1; \
	    fi; \
	    echo "make chromium: WARNING: $$why: the browser test will be SKIPPED"; \
	  fi; }

## make model: retrain the shipped tiny GPT-2 on the TinyReviews world (same seed, same weights).
model: $(STAMP)
	$(PY) -m rl4lmt.zoo train

## make sft-model: retrain the shipped instruction-tuned tiny-reviews-sft (chapter 5; same seed, same weights).
sft-model: $(STAMP)
	$(PY) -m rl4lmt.sft train

## make rlhf-models: retrain the shipped tiny-reviews-ppo and tiny-reviews-dpo (chapter 8; same seed, same weights).
rlhf-models: $(STAMP)
	$(PY) -m rl4lmt.rlhf_models all

## make reward-model: retrain the shipped reward model tiny-reviews-rm (chapter 6; same seed, same weights).
reward-model: $(STAMP)
	$(PY) -m rl4lmt.reward train

## make process-reward-model: retrain the shipped process reward model tiny-reviews-prm (chapter 6; same seed, same weights).
process-reward-model: $(STAMP)
	$(PY) -m rl4lmt.reward train-prm

## make exercises: regenerate exercises/ (student versions) from solutions/ with nbgrader; commit both.
exercises: $(STAMP)
	$(PY) -m rl4lmt.grading release

clean-book:
	rm -rf _build
