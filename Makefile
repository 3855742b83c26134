# napari-xaiclip: every user-facing target sets itself up on a fresh machine.
#   make demo   napari with the phantom and every widget docked (headless job without a display)
#   make test   the whole test suite under Xvfb
#   make bench  the benchmarks; writes docs/benchmarks.md

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEB_PACKAGES := xvfb xauth libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 \
	libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 \
	libxcb-xinput0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libegl1 \
	libdbus-1-3 libgl1 libgl1-mesa-dri libglx-mesa0 libfontconfig1
PYTEST_ARGS ?=

.PHONY: demo test bench venv sysdeps

demo: venv
	@if [ -z "$$DISPLAY" ]; then \
		echo "No display (\$$DISPLAY is empty): running the headless main job instead -> demo-output/"; \
		$(VENV)/bin/xaiclip demo --out demo-output; \
	else \
		$(VENV)/bin/xaiclip gui; \
	fi

test: venv sysdeps
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m pytest $(PYTEST_ARGS)

bench: venv
	$(PY) benchmarks/run.py --out docs/benchmarks.md

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[pyqt,testing]"
	@touch $(STAMP)

# Debian packages napari needs for GL under Xvfb; installed only when missing.
sysdeps:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
