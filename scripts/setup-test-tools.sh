#!/usr/bin/env bash
# Installs the programs the tests use besides the Rust toolchain: headless
# Chromium from Debian's packages, which renders the HTML reports. Does
# nothing when it is already installed.
set -euo pipefail

if command -v chromium >/dev/null; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
$sudo apt-get update
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y chromium
