#!/usr/bin/env bash
# Run a command inside the project's virtual environment, creating it on first use.
#
#   bash scripts/run.sh lkseg demo        # the main job on a generated phantom CT
#   bash scripts/run.sh pytest            # the test suite
#
# The environment lives in .venv (LKSEG_VENV overrides). torch 2.14.1 and torchvision 0.29.1 are
# installed first, from this machine's local wheel store when pip's configuration points there (a
# CUDA build that also runs on CPU); then the project with its extras (refine, ray, nnunet, test, dev,
# web) and slicer-layer-dm for the web front end (see below). As root with apt-get, Debian's chromium
# and chromium-driver are installed for the browser tests when missing. A stamp file makes later calls
# skip the installation until pyproject.toml or this script changes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LKSEG_VENV:-$root/.venv}"
py="${PYTHON:-python3}"
stamp="$venv/.lkseg-installed"
want="$(cat "$root/pyproject.toml" "$root/scripts/run.sh" | sha256sum | cut -c1-16)"

# Debian's chromium + chromium-driver for the web front end's browser tests (Testing/web_harness.py).
# Only as root with apt-get; any failure is reported and the browser tests then skip with the reason.
install_chromium() {
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "[lkseg] /usr/bin/chromium or /usr/bin/chromedriver missing and not root with apt-get:" \
      "the browser tests will skip (install the Debian packages chromium and chromium-driver)" >&2
    return 0
  fi
  echo "[lkseg] installing Debian's chromium and chromium-driver for the browser tests" >&2
  local log
  log="$(mktemp)"
  if apt-get update -qq >"$log" 2>&1 &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver \
      >>"$log" 2>&1; then
    echo "[lkseg] $(/usr/bin/chromium --version 2>/dev/null || echo chromium) installed" >&2
  else
    echo "[lkseg] could not install chromium/chromium-driver with apt-get (last lines below);" \
      "the browser tests will skip" >&2
    tail -n 5 "$log" >&2 || true
  fi
  rm -f "$log"
  return 0
}

if [ ! -x "$venv/bin/python" ]; then
  echo "[lkseg] creating virtual environment in $venv" >&2
  "$py" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[lkseg] installing torch 2.14.1 + torchvision 0.29.1 and the project (first run takes a few minutes)" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" >&2
  "$venv/bin/python" -m pip install -q -e "$root[refine,ray,nnunet,test,dev,web]" >&2
  # trame-slicer's views need slicer-layer-dm 2.0.0, whose metadata pins slicer-core 5.11.0.*; the whole
  # environment runs on slicer-core 5.12.4.0 (the test and web extras), which it works with (proven by the
  # browser test), so it is installed without its dependencies (pip would otherwise downgrade slicer-core).
  "$venv/bin/python" -m pip install -q --no-deps "slicer-layer-dm==2.0.0" >&2
  install_chromium
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
cd "$root"
if [ "$#" -eq 0 ]; then
  exec "$venv/bin/python" -c "import lkseg; print('lkseg', lkseg.__version__)"
fi
exec "$@"
