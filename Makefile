# conserviz: `make course` runs the course on the sample data; `make test` runs every test.
# Each course target is one command of the README's path without make, run from .venv/bin.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SITE   := build/site
# The course alone (`make course`, `make lab`); the test suite and the website add their extras.
COURSE_STAMP := $(VENV)/.conserviz-course
TEST_STAMP   := $(VENV)/.conserviz-test
DOCS_STAMP   := $(VENV)/.conserviz-docs

# QUICK=1: the small sample and one short epoch; EPOCHS=0: the head only, no fine-tuning. They
# reach the notebooks as CONSERVIZ_QUICK and CONSERVIZ_EPOCHS, so `make course QUICK=1 EPOCHS=0`
# before a session and `make lab QUICK=1 EPOCHS=0` in it run the same course.
ifneq ($(QUICK),)
export CONSERVIZ_QUICK := $(QUICK)
endif
ifneq ($(EPOCHS),)
export CONSERVIZ_EPOCHS := $(EPOCHS)
endif

# TORCH_INDEX=cpu: torch and torchvision from PyTorch's CPU-only wheels (Linux without an NVIDIA
# GPU): the same course without the CUDA libraries of the default Linux wheels.
TORCH_FROM_INDEX = $(BIN)/pip install torch torchvision --index-url https://download.pytorch.org/whl/$(TORCH_INDEX)

.PHONY: stored-outputs course test unit notebooks solutions lab site benchmark sample clean

# The course's environment, rebuilt when pyproject.toml changes.
$(COURSE_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(TORCH_FROM_INDEX))
	$(BIN)/pip install -e .
	@touch $@

# The test suite runs the site's test too, so it gets both extras.
$(TEST_STAMP): $(COURSE_STAMP)
	$(BIN)/pip install --quiet -e ".[test,docs]"
	@touch $@

$(DOCS_STAMP): $(COURSE_STAMP)
	$(BIN)/pip install --quiet -e ".[docs]"
	@touch $@

# The headless runner: progress, section headings and ETAs in the terminal; Ctrl-C stops it
# promptly (and says how to resume fine-tuning); a dead kernel ends it with the likely cause.
course: $(COURSE_STAMP)
	$(BIN)/conserviz course

test: unit notebooks

unit: $(TEST_STAMP)
	$(BIN)/python -m pytest tests

# Every notebook, then every solved copy, each in its own fresh kernel, on the quick sample
# (CONSERVIZ_QUICK=1), writing to outputs/quick/ so a test run never touches the outputs of
# `make course`. The solved copies assert that each exercise's check passes.
notebooks: $(TEST_STAMP)
	CONSERVIZ_QUICK=1 CONSERVIZ_OUTPUTS=$(CURDIR)/outputs/quick \
		$(BIN)/python -m pytest --nbval-lax --nbval-current-env \
		--nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider \
		notebooks/*.ipynb notebooks/solutions/*.ipynb

# The exercises' placeholders (in notebooks/) and solved copies (notebooks/solutions/), written
# from notebooks/solutions/source/: run it after editing an exercise or re-running a notebook.
solutions: $(COURSE_STAMP)
	$(BIN)/python -m conserviz_utils.teaching.solutions

# The outputs stored in the committed notebooks: one quick run from scratch into one folder
# (outputs/stored), copied into notebooks/ cell by cell with this machine's paths made relative,
# then the solved copies rebuilt. Run it after changing a notebook, before committing.
stored-outputs: $(COURSE_STAMP)
	rm -rf outputs/stored
	CONSERVIZ_QUICK=1 $(BIN)/conserviz course --outputs outputs/stored
	$(BIN)/python -m conserviz_utils.teaching.stored_outputs outputs/stored/executed

# Containers, JupyterHub images and CI machines run as root: Jupyter refuses that unless told.
AS_ROOT = $$(if [ "$$(id -u)" = 0 ]; then echo --allow-root; fi)
lab: $(COURSE_STAMP)
	$(BIN)/jupyter lab notebooks/ $(AS_ROOT)

# The course as a static website in build/site: the notebooks with their committed outputs, the
# README and docs/ (docs/conf.py). Nothing is executed and nothing is fetched from the network.
site: $(DOCS_STAMP)
	$(BIN)/sphinx-build -b html -c docs . $(SITE)

# Each pass of the course against the model's raw speed (the ratios), then the seed pipeline against
# conserviz's; both print under the CPU's model name.
benchmark: $(COURSE_STAMP)
	$(BIN)/python benchmarks/passes.py
	$(BIN)/python benchmarks/run.py

sample: $(COURSE_STAMP)
	$(BIN)/python -m conserviz_utils.tools.sample --out data/sample

# Everything here is rebuilt on demand: the outputs (models, caches, executed notebooks) and the
# generated samples. Says what it frees first.
CLEANED := outputs data/sample data/sample-quick data/cache
clean:
	@found=$$(for path in $(CLEANED); do [ -e "$$path" ] && echo "$$path"; done); \
	if [ -z "$$found" ]; then echo "nothing to clean"; else \
		du -sh $$found | sed 's/^/removing /'; \
		echo "freed $$(du -shc $$found | tail -n 1 | cut -f1) in total"; \
		rm -rf $$found; fi
