#!/usr/bin/env bash
# One command from a fresh clone: make a virtual environment, install medkge (pinned versions), and
# train MED (RotatE, sub-models 10 to 160 dims) on the bundled Kinships graph, ending with the per-dim
# test table. A few minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -c constraints.txt -e .
medkge train configs/quickstart.yaml --out "runs/quickstart-$(date +%Y%m%d-%H%M%S)"
