# make demo : create .venv, install, run the whole pipeline on the embedded digits data (CPU or GPU)
# make demo-seeds : the same three rows with 3 seeds each: mean ± std per metric and a bar chart (results.png)
# make demo-purifiers : the same, plus the NIM/De^3 and MAEP purifier rows and the De^3 gamma sweep
# make test : create .venv if needed, install, run the whole test suite
# make mutants : break each core guarantee on purpose in a temporary copy and report which the tests miss (not CI)
#
# OFFLINE=1 builds .venv on top of the system's site-packages and installs only this package
# (for machines without a package registry that already carry torch, e.g. the lent GPU machines).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo demo-seeds demo-purifiers test mutants bench clean

$(STAMP): setup.py requirements.txt
ifeq ($(OFFLINE),1)
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install --no-deps --no-build-isolation -e .
else
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -r requirements.txt
	# torchattacks pins requests~=2.25.1 but never imports it: --no-deps keeps requests/idna/urllib3 as they are
	$(PY) -m pip install --no-deps torchattacks==3.5.1
	$(PY) -m pip install --no-deps -e .
endif
	touch $(STAMP)

demo: $(STAMP)
	rm -rf output_dir/demo
	$(VENV)/bin/mimir-fast demo --output_dir output_dir/demo

demo-seeds: $(STAMP)
	rm -rf output_dir/demo-seeds
	$(VENV)/bin/mimir-fast demo --seeds 3 --output_dir output_dir/demo-seeds

demo-purifiers: $(STAMP)
	rm -rf output_dir/demo
	$(VENV)/bin/mimir-fast demo --purifiers --output_dir output_dir/demo

test: $(STAMP)
	$(PY) -m pytest tests $(PYTEST_ARGS)

mutants: $(STAMP)
	$(PY) tests/mutants.py

bench: $(STAMP)
	$(PY) -m bench.ops --out bench/results
	$(PY) -m bench.step --out bench/results
	$(PY) -m bench.step --suite all --out bench/results
	$(PY) -m bench.loader --out bench/results --step_json 'bench/results/step_*.json'

clean:
	rm -rf $(VENV) output_dir build *.egg-info
