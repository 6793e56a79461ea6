# Set-up and the two everyday jobs. Every target creates .venv with pinned versions if needed.
#   make demo    a small real sweep on Fashion-MNIST, then its table and demo-report.html
#   make test    the test suite
# TORCH_SPEC picks the torch build, e.g. make demo TORCH_SPEC="torch==2.13.0 --index-url <your CUDA index>"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
CONSTRAINTS ?= constraints.txt
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DB ?= demo.db
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo data debian-data test bench bench-tf bench-vision clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) $(TORCH_SPEC)
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e ".[test,cluster]"
	touch $@

demo: $(STAMP) data
	$(BIN)/batchlab sweep --dataset fashion-mnist --model seed-cnn --batch-size 32,128,512 \
		--epochs 2 --limit-train 10000 --repeats 2 --db $(DEMO_DB)
	$(BIN)/batchlab report --db $(DEMO_DB) --html demo-report.html

# Fashion-MNIST: already present, else from the official mirror, else Debian/Ubuntu's package.
data: $(STAMP)
	$(BIN)/batchlab data download fashion-mnist || $(MAKE) --no-print-directory debian-data

debian-data:
	@command -v apt-get >/dev/null || { echo "no network and no apt-get: see README, Data"; exit 1; }
	$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Benchmarks against plain PyTorch and Keras/TensorFlow (not part of the tests): see bench/run.py.
bench: $(STAMP)
	-$(MAKE) --no-print-directory bench-tf
	$(BIN)/python bench/run.py
	$(BIN)/python bench/images.py

# The optional Keras 3 + TensorFlow peer lives in its own environment (large; may be unavailable).
bench-tf: bench/.venv-tf/.installed

bench/.venv-tf/.installed:
	$(PYTHON) -m venv bench/.venv-tf
	bench/.venv-tf/bin/pip install --quiet tensorflow-cpu==2.21.0 keras==3.15.1
	touch $@

# torchvision's resnet18 on 3x32x32 images (bench/images.py --model), in its own environment: the
# torchvision wheels PyPI serves are CUDA builds that do not import beside the CPU build of torch
# 2.13.0, so this one pairs torch 2.14.1 and torchvision 0.29.1 (several GB; both loops use them).
VISION_VENV := bench/.venv-vision
bench-vision: $(VISION_VENV)/.installed
	$(VISION_VENV)/bin/python bench/images.py --model torchvision:resnet18

$(VISION_VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VISION_VENV)
	$(VISION_VENV)/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1
	grep -v -E '^(torch|torchvision)==' $(CONSTRAINTS) > $(VISION_VENV)/constraints.txt
	$(VISION_VENV)/bin/pip install --quiet -c $(VISION_VENV)/constraints.txt -e .
	touch $@

clean:
	rm -rf $(VENV) $(DEMO_DB) $(DEMO_DB)-wal $(DEMO_DB)-shm demo-report.html
