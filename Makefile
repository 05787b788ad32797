# conserviz: `make course` runs the course on the sample data; `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.conserviz-installed

.PHONY: course test unit notebooks lab benchmark sample clean

# One environment for everything; rebuilt when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

course: $(STAMP)
	$(BIN)/python -m conserviz_utils.course

test: unit notebooks

unit: $(STAMP)
	$(BIN)/python -m pytest tests

# Every notebook in its own fresh kernel, on the quick sample (CONSERVIZ_QUICK=1), writing to
# outputs/quick/ so a test run never touches the outputs of `make course`.
notebooks: $(STAMP)
	CONSERVIZ_QUICK=1 CONSERVIZ_OUTPUTS=$(CURDIR)/outputs/quick \
		$(BIN)/python -m pytest --nbval-lax --nbval-current-env \
		--nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider notebooks/

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

benchmark: $(STAMP)
	$(BIN)/python benchmarks/run.py

sample: $(STAMP)
	$(BIN)/python -m conserviz_utils.sample --out data/sample

clean:
	rm -rf outputs data/sample data/sample-quick data/cache
