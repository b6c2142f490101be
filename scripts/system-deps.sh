#!/usr/bin/env bash
# Installs the Debian packages the Python dependencies need when they are missing:
#   gcc + libgmp-dev  libp2p pins fastecdsa 2.3.2, which builds from source against GMP
#   libgomp1          the xllamacpp wheel (embedded llama.cpp engine) links OpenMP
#   python3-venv      `python3 -m venv` on Debian-based images
set -euo pipefail
missing=()
for pkg in gcc libgmp-dev libgomp1; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing system packages: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
