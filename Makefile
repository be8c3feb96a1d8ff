# Two commands on a fresh machine: `make demo` (the main job on the bundled sample) and `make test`.
# Both create .venv when it is missing. pip, not uv or poetry: on the project's machines and CI only pip takes the
# CPU torch wheel of their local index (torch<2.14); elsewhere the index decides (docs/getting-started.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install

demo: $(VENV)/.installed
	$(BIN)/python -m pipeline.run

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m ""  # every tier; a plain pytest skips the slow one

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-guide.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps --require-hashes -r requirements-guide.txt
	touch $@

# The tests also build the docs (mkdocs build --strict), run the stages on a local Ray and score MTEB tasks: the
# extras they need.
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev,docs,ray,eval]"
	touch $@
