# mstt-book: `make book` builds the HTML book, `make test` runs every test.
# Both install what they need first (a .venv beside this file).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PARAMS ?= smoke
KERNEL ?= python3
# `make lab`: JupyterLab's port when free (else any free one); `make publish`: the git remote.
LAB_PORT ?= 8888
REMOTE ?= origin
# The project's Jupyter kernel, registered inside the venv (like `ipykernel install --sys-prefix`).
KERNELSPEC := $(VENV)/share/jupyter/kernels/mstt-book/kernel.json

.PHONY: install book run build test unit notebooks browser-deps lint references lab publish clean

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,cluster]'
	touch $(INSTALLED)

$(KERNELSPEC): $(INSTALLED)
	$(PY) -m mstt_lib.lab kernel

install: $(INSTALLED) $(KERNELSPEC)

# Generate the synthetic cohort (first time), run every notebook, build _build/html.
book: install
	$(VENV)/bin/mstt-book book --params $(PARAMS) --kernel $(KERNEL)

run: install
	$(VENV)/bin/mstt-book run --params $(PARAMS) --kernel $(KERNEL)

build: install
	$(VENV)/bin/mstt-book build

# Debian's chromium and its driver, for the headless-browser test.
browser-deps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		echo "installing chromium and chromium-driver (apt)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

# Unit tests, nbval over every notebook, and the browser check of the built book. Two pytest
# workers, each taking whole files (a notebook's cells share a kernel): many tests wait on
# subprocesses, kernels and Ray, so on a 2-core CI machine they took 647-668 s against 798 s in one.
test: install browser-deps book
	$(PY) -m pytest tests notebooks --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg --durations=25 \
		-n 2 --dist loadfile

# The fast loop: the library's tests without building the book, running a chapter or a browser.
unit: install
	$(PY) -m pytest tests -m "not book and not browser"

# ruff (the linter and the formatter's check), and the layer rules of pyproject.toml's [tool.importlinter] (import-linter).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# JupyterLab in this folder on 127.0.0.1, with its own token; prints the URL. Ctrl-C stops it.
lab: install
	$(PY) -m mstt_lib.lab serve --port $(LAB_PORT)

# Push the built book (_build/html, from `make book`) to the gh-pages branch of $(REMOTE).
publish: install
	$(VENV)/bin/mstt-book publish --remote $(REMOTE)

# After a deliberate change of a checked result: store the new nbval references.
references: run
	$(VENV)/bin/mstt-book references

clean:
	rm -rf _build book/chapters _static/plotly.min.js work
