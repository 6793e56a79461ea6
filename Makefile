# Set-up and the two everyday jobs. Every target creates .venv with pinned versions if needed.
#   make demo    a small real sweep on Fashion-MNIST, then its table
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

.PHONY: install demo data debian-data test clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) $(TORCH_SPEC)
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e ".[test]"
	touch $@

demo: $(STAMP) data
	$(BIN)/batchlab sweep --dataset fashion-mnist --model seed-cnn --batch-size 32,128,512 \
		--epochs 2 --limit-train 10000 --repeats 2 --db $(DEMO_DB)
	$(BIN)/batchlab report --db $(DEMO_DB)

# Fashion-MNIST: already present, else from the official mirror, else Debian/Ubuntu's package.
data: $(STAMP)
	$(BIN)/batchlab data download fashion-mnist || $(MAKE) --no-print-directory debian-data

debian-data:
	@command -v apt-get >/dev/null || { echo "no network and no apt-get: see README, Data"; exit 1; }
	$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_DB) $(DEMO_DB)-wal $(DEMO_DB)-shm
