# Every target bootstraps the project's own environment in .venv (pinned by constraints.txt).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: venv demo demo-ddpm demo-sd test test-slow lint bench fmnist clean

$(STAMP): pyproject.toml constraints.txt
	@echo "building $(VENV): the pinned stack from constraints.txt (1-2 minutes, once)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,generation]'
	@touch $(STAMP)
	@echo "$(VENV) ready: the salun command is $(BIN)/salun (or: source $(BIN)/activate)"

venv: $(STAMP)

# Fashion-MNIST comes from Debian's package; install it when missing and we are root.
fmnist:
	@if [ ! -e $(FMNIST)/train-images-idx3-ubyte.gz ] && [ ! -e $(FMNIST)/train-images-idx3-ubyte ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's dataset-fashion-mnist with apt-get (needs root)"; \
	    (apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	      || echo "could not install dataset-fashion-mnist; the demo falls back to digits"; \
	  else echo "Fashion-MNIST missing (apt-get install dataset-fashion-mnist as root); the demo falls back to digits"; fi; \
	fi

demo: $(STAMP) fmnist
	$(BIN)/salun demo --out runs/demo --overwrite

# Class erasure from a class-conditional DDPM on digits (trains the model, Retrain included).
demo-ddpm: $(STAMP)
	$(BIN)/salun demo --task ddpm --retrain --out runs/demo-ddpm --overwrite

# Erase a digit from a small text-to-image pipeline in the Stable Diffusion architecture
# (trains the pipeline, the judge, then SalUn and ESD; offline).
demo-sd: $(STAMP)
	$(BIN)/salun demo --task text_to_image --out runs/demo-sd --overwrite

test: $(STAMP) fmnist
	$(BIN)/python -m pytest -m "not slow"

test-slow: $(STAMP) fmnist
	$(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python benchmarks/mask.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
