# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH := torch==2.9.1 torchvision==0.24.1
else
TORCH := torch==2.14.1 torchvision==0.29.1
endif

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

.PHONY: install demo demo-space test test-slow zoo bench bench-latency bench-autoslim bench-autoslim-cifar bench-search-cifar bench-peers bench-peers-h5 bench-peers-h5-check pretrain
install: $(VENV)/.installed

demo: $(VENV)/.installed  ## the main job: autoslim from the shipped converged ResNet-20 x1.5 on the shipped CIFAR-10 subset (~6 min idle)
	$(PY) examples/autoslim_cifar.py

demo-space: $(VENV)/.installed  ## channel space of mobilenet_v2: groups, FLOPs, extraction, ONNX, latency
	$(PY) examples/demo.py

test: $(VENV)/.installed  ## the default test run (well under 20 minutes)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(VENV)/.installed  ## the whole torchvision zoo and other long checks
	$(PY) -m pytest -q -m slow

zoo: $(VENV)/.installed  ## coverage table over the torchvision zoo -> docs/zoo_coverage.md
	$(PY) tools/zoo_coverage.py

bench: $(VENV)/.installed  ## channel-space speed benchmark -> docs/benchmarks.md
	$(PY) benchmarks/bench_channel_space.py

bench-latency: $(VENV)/.installed  ## latency predictor vs measured latency -> docs/latency_benchmark.md (~25 min from scratch)
	$(PY) benchmarks/bench_latency.py

bench-autoslim: $(VENV)/.installed  ## measured latency vs budget, 2 families x 3 budgets -> docs/autoslim_budget.md
	$(PY) benchmarks/bench_autoslim_budget.py

bench-autoslim-cifar: $(VENV)/.installed  ## AutoSlim vs uniform width on full CIFAR-10 -> docs/autoslim_cifar.md
	$(PY) benchmarks/bench_autoslim_cifar.py

SEARCH_CIFAR = $(PY) benchmarks/bench_dms_cifar.py --model resnet18 --train-per-class 4500 --epochs 6
bench-search-cifar: $(VENV)/.installed  ## DMS vs AutoSlim vs uniform, torchvision ResNet-18, CIFAR-10 -> docs/dms_cifar_resnet18*.md (~2 h, resumable)
	$(SEARCH_CIFAR) --supernet-epochs 6 --dms-search 3 --methods uniform autoslim dms --seeds 0 1 --full
	$(SEARCH_CIFAR) --dms-search 6 --methods dms --budgets 0.5 --seeds 0 1 --work out/dms6_probe --out docs/dms_cifar_resnet18_dms6

# The peer benchmark's two families, 30 epochs each; ResNet-20 x1.5 is shipped and is the demo's starting point.
# Their smallest subnets measure under 35% of the full latency (ResNet-20's floor at batch 1 is 40%).
pretrain: $(VENV)/.installed  ## converged CIFAR-10 starting points of the peer benchmark -> data/weights/ (hours, resumable)
	$(PY) benchmarks/pretrain_cifar.py --model cifar_resnet20_w1.5 --epochs 30
	$(PY) benchmarks/pretrain_cifar.py --model cifar_mobilenet_v2_w1 --epochs 30

# Training budget per row: 3 epochs at full-width cost (AutoSlim's supernet and DMS's search are charged against it).
# Torch-Pruning: L1, group norm and Taylor ranked globally, plus L1 per layer (a second call adds those rows).
PEERS = $(PY) benchmarks/bench_peers_cifar.py --seeds 0 1 --epochs 3 --supernet-epochs 0.5 --dms-search 0.5 --threads 1
TP_GLOBAL = --tp-criteria l1 group_norm taylor --tp-modes global
TP_LOCAL = --methods tp --tp-criteria l1 --tp-modes local
PEER_MODELS = cifar_resnet20_w1.5 cifar_mobilenet_v2_w1
bench-peers: $(PEER_MODELS:%=bench-peers-%)  ## AutoSlim / DMS vs Torch-Pruning vs uniform from the pretrained models -> docs/peers_cifar.md (~4 h per model on one core; `make -j2 bench-peers` runs the models side by side; resumable: rerun to continue)
	$(PY) benchmarks/peers_summary.py $(PEER_MODELS:%=docs/peers_cifar_%.json)

$(VENV)/.bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[bench]"
	touch $@

bench-peers-%: $(VENV)/.bench  ## one model of bench-peers -> docs/peers_cifar_<model>.md
	$(PEERS) --model $* $(TP_GLOBAL)
	$(PEERS) --model $* $(TP_LOCAL)

# The same with one 5% latency headroom for every method (a file's ratio to the full model moves by up to 4% between
# checks on this shared host, more than the default 2%). After it, on a quiet machine: `make bench-peers-h5-check`.
H5 = --headroom 0.05 --out docs/peers_cifar_h5_$* --work out/bench_peers_cifar_h5/$*
bench-peers-h5: $(PEER_MODELS:%=bench-peers-h5-%)  ## bench-peers with a 5% headroom for every method -> docs/peers_cifar_h5.md (resumable)
	$(PY) benchmarks/peers_summary.py $(PEER_MODELS:%=docs/peers_cifar_h5_%.json) --out docs/peers_cifar_h5.md

bench-peers-h5-%: $(VENV)/.bench
	$(PEERS) --model $* $(TP_GLOBAL) $(H5)
	$(PEERS) --model $* $(TP_LOCAL) $(H5)

# On a quiet machine, nothing else running: the final latency check again, then the rows over the budget or using
# under 85% of it chosen again (no fine-tune); then `make -j2 bench-peers-h5` fine-tunes those and rewrites the pages.
# Choosing again needs the CPU the rows were chosen on (the committed rows: an AMD EPYC host); on another CPU the
# benchmark stops with PeerBenchmarkError after the check (latency ratios are device-specific).
H5_OF = --headroom 0.05 --out docs/peers_cifar_h5_$$m --work out/bench_peers_cifar_h5/$$m
bench-peers-h5-check: $(VENV)/.bench  ## on a quiet machine after bench-peers-h5: time every file again, choose again the rows outside the band
	for m in $(PEER_MODELS); do $(PEERS) --model $$m $(TP_GLOBAL) $(H5_OF) --retime || exit 1; done
	for m in $(PEER_MODELS); do \
	  $(PEERS) --model $$m $(TP_GLOBAL) $(H5_OF) --rechoose-over-budget --rechoose-under-use 0.85 --choose-only \
	  && $(PEERS) --model $$m $(TP_LOCAL) $(H5_OF) --choose-only || exit 1; done
