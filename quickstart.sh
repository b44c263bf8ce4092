#!/usr/bin/env bash
# One command from a fresh clone: make a virtual environment, install medkge with the test extra (pinned
# versions: the tests and `medkge serve` then work in it too), and train MED (RotatE, sub-models 10 to 160
# dims) on the bundled Kinships graph, ending with the per-dim test table. 2.5 to 9 minutes of training on one
# CPU thread, depending on the machine's other work, after the install (docs/getting-started.md).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -c constraints.txt -e ".[test]"
medkge train configs/quickstart.yaml --out "runs/quickstart-$(date +%Y%m%d-%H%M%S)"
