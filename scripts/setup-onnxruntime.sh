#!/usr/bin/env bash
# Installs the ONNX Runtime shared library that imgsim loads at run time.
#
# The library comes from the PyPI wheel onnxruntime==1.31.1, fetched with
# `pip download --no-deps`, so only the Python package registry is used.
# It is placed in imgsim's per-user data directory, which is the last place
# imgsim searches (see "ONNX Runtime" in README.md for the search order).
#
# Usage: scripts/setup-onnxruntime.sh [DESTINATION_DIR]
set -euo pipefail

version=1.31.1
library=libonnxruntime.so.$version
dest=${1:-${XDG_DATA_HOME:-$HOME/.local/share}/imgsim}

# sha256 of the wheels this script has been checked with; a wheel for
# another platform or Python version is accepted with a warning.
declare -A known_wheels=(
  [onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl]=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
)

if [ -f "$dest/$library" ]; then
  echo "ONNX Runtime $version is already installed: $dest/$library"
  exit 0
fi

python=${PYTHON:-python3}
if ! command -v "$python" >/dev/null; then
  echo "error: $python not found; install Python 3 with pip, or set PYTHON" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "Downloading onnxruntime==$version from PyPI ..."
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
  -d "$work" "onnxruntime==$version"

wheel=$(find "$work" -name 'onnxruntime-*.whl' -print -quit)
if [ -z "$wheel" ]; then
  echo "error: pip did not produce an onnxruntime wheel in $work" >&2
  exit 1
fi
name=$(basename "$wheel")
actual=$(sha256sum "$wheel" | cut -d' ' -f1)
expected=${known_wheels[$name]:-}
if [ -z "$expected" ]; then
  echo "warning: $name is not a wheel this script has been checked with (sha256 $actual)" >&2
elif [ "$actual" != "$expected" ]; then
  echo "error: sha256 mismatch for $name: expected $expected, got $actual" >&2
  exit 1
fi

mkdir -p "$dest"
"$python" - "$wheel" "$dest" "$library" <<'PY'
import os, shutil, sys, zipfile

wheel, dest, library = sys.argv[1:4]
member = f"onnxruntime/capi/{library}"
with zipfile.ZipFile(wheel) as archive:
    if member not in archive.namelist():
        sys.exit(f"error: {wheel} does not contain {member}")
    partial = os.path.join(dest, library + ".partial")
    with archive.open(member) as source, open(partial, "wb") as target:
        shutil.copyfileobj(source, target)
    os.chmod(partial, 0o755)
    os.replace(partial, os.path.join(dest, library))
PY

echo "Installed $dest/$library"
