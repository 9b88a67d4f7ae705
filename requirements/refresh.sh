#!/usr/bin/env bash
# Refresh requirements/constraints.txt: resolve the newest versions pyproject.toml allows in a
# fresh virtual environment, run the test suite on them, and write the lock only if it passes.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)/venv
python -m venv "$venv"
. "$venv/bin/activate"
pip install -q torch==2.13.0
pip install -q -e ".[test]"
WANDB_MODE=offline python -m pytest tests
{
  sed -n '1,3p' requirements/constraints.txt
  pip freeze --exclude-editable | grep -v '^torch=='
} > requirements/constraints.txt.new
mv requirements/constraints.txt.new requirements/constraints.txt
echo "wrote requirements/constraints.txt ($(grep -vc '^#' requirements/constraints.txt) packages)"
