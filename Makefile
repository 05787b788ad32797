# conserviz: `make course` runs the course on the sample data; `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.conserviz-installed

.PHONY: course test unit notebooks solutions lab benchmark sample clean

# One environment for everything; rebuilt when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

# The headless runner: progress, section headings and ETAs in the terminal; Ctrl-C stops it
# promptly (and says how to resume fine-tuning); a dead kernel ends it with the likely cause.
course: $(STAMP)
	$(BIN)/python -m conserviz_utils.tools.runner

test: unit notebooks

unit: $(STAMP)
	$(BIN)/python -m pytest tests

# Every notebook, then every solved copy, each in its own fresh kernel, on the quick sample
# (CONSERVIZ_QUICK=1), writing to outputs/quick/ so a test run never touches the outputs of
# `make course`. The solved copies assert that each exercise's check passes.
notebooks: $(STAMP)
	CONSERVIZ_QUICK=1 CONSERVIZ_OUTPUTS=$(CURDIR)/outputs/quick \
		$(BIN)/python -m pytest --nbval-lax --nbval-current-env \
		--nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider \
		notebooks/*.ipynb notebooks/solutions/*.ipynb

# The exercises' placeholders (in notebooks/) and solved copies (notebooks/solutions/), written
# from notebooks/solutions/source/: run it after editing an exercise or re-running a notebook.
solutions: $(STAMP)
	$(BIN)/python -m conserviz_utils.teaching.solutions

# Containers, JupyterHub images and CI machines run as root: Jupyter refuses that unless told.
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/ $$(if [ "$$(id -u)" = 0 ]; then echo --allow-root; fi)

benchmark: $(STAMP)
	$(BIN)/python benchmarks/run.py

sample: $(STAMP)
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
