#!/usr/bin/env bash
# Run a command inside the project's virtual environment, creating it on first use.
#
#   bash scripts/run.sh lkseg demo        # the main job on a generated phantom CT
#   bash scripts/run.sh pytest            # the test suite
#
# The environment lives in .venv (LKSEG_VENV overrides). torch 2.14.1 and torchvision 0.29.1 are
# installed first, from this machine's local wheel store when pip's configuration points there (a
# CUDA build that also runs on CPU); then the project with its refine and test extras. A stamp
# file makes later calls skip the installation until pyproject.toml changes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LKSEG_VENV:-$root/.venv}"
py="${PYTHON:-python3}"
stamp="$venv/.lkseg-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -c1-16)"

if [ ! -x "$venv/bin/python" ]; then
  echo "[lkseg] creating virtual environment in $venv" >&2
  "$py" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[lkseg] installing torch 2.14.1 + torchvision 0.29.1 and the project (first run takes a few minutes)" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" >&2
  "$venv/bin/python" -m pip install -q -e "$root[refine,ray,nnunet,test,dev]" >&2
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
cd "$root"
if [ "$#" -eq 0 ]; then
  exec "$venv/bin/python" -c "import lkseg; print('lkseg', lkseg.__version__)"
fi
exec "$@"
