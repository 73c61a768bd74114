#!/usr/bin/env bash
# The README's offline install on a bare host, checked (`make check-offline-install`):
#   1. a fresh venv that already has torch, as a CUDA host's image does (installed with the network);
#   2. the README's two commands, run in a network namespace of their own: no route anywhere, so
#      pip can only use the wheelhouse;
#   3. a real job through a worker installed that way (the checkout's devstack/demo.py, which is not
#      installed: a private redis-server on loopback, one worker, one audit job with broken files),
#      still offline.
# Usage: ops/check-offline-install.sh PYTHON TORCH_VERSION WHEELHOUSE
set -euo pipefail
python=$1 torch_version=$2 wheelhouse=$(realpath "$3")
work=$(mktemp -d /tmp/faceq-offline-XXXXXX)
trap 'rm -rf "$work"' EXIT

"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q "torch==$torch_version"  # the host's torch, before going offline

if ! unshare -rn true 2>/dev/null; then
  echo "check-offline-install: cannot make a network namespace here (unshare -rn); not checked" >&2
  exit 1
fi
cp -r "$(dirname "$0")/../devstack" "$work/devstack"  # dev machinery: run from the checkout, never installed
cd "$work"
unshare -rn bash -euo pipefail -c '
  ip link set lo up  # loopback only: the demo runs its own redis-server
  if python3 -c "import socket; socket.create_connection((\"pypi.org\", 443), timeout=3)" 2>/dev/null; then
    echo "the network is still reachable: not an offline check" >&2; exit 1
  fi
  # the README'"'"'s two commands
  venv/bin/pip install --no-index --find-links '"$wheelhouse"' --require-hashes -r '"$wheelhouse"'/requirements.lock
  venv/bin/pip install --no-index --find-links '"$wheelhouse"' "faceq[worker]"
  venv/bin/pip check
  venv/bin/faceq --version
  venv/bin/python -m devstack.demo
'
test -s "$work/demo-output/store/jobs" -o -d "$work/demo-output/store/jobs"
echo "offline install: OK (wheelhouse $wheelhouse, torch $torch_version already on the host)"
