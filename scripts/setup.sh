#!/usr/bin/env bash
# Set up geoloc in a virtual environment: .venv in the repository, or $GEOLOC_VENV.
#
#   scripts/setup.sh            geoloc with its model stack (torch, torchvision, transformers, geoclip)
#   scripts/setup.sh --dev      the same plus the test tools, Ray (the ray extra, for the Ray engine
#                               tests), PLONK's authors' package diff-plonk for the parity tests
#                               (without its dependencies: its scipy pin would replace ours)
#                               and Chromium for the browser tests
#                               (Debian's chromium package, installed with apt-get when run as root)
#
# PyTorch: if the environment already imports torch and torchvision (say, a CUDA build you
# installed for your GPU), they are kept as they are. Otherwise the pair named by
# GEOLOC_TORCH (default: torch==2.14.1 torchvision==0.29.1), which is known to import
# together, is installed first, so that pip never picks torch and torchvision that clash.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${GEOLOC_VENV:-$root/.venv}
python=${PYTHON:-python3}
torch_pair=${GEOLOC_TORCH:-"torch==2.14.1 torchvision==0.29.1"}
extras="models"

for arg in "$@"; do
  case "$arg" in
    --dev) extras="models,dev,ray" ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "setup.sh: geoloc needs Python 3.10 or newer; $python is $("$python" --version 2>&1). Set PYTHON=..." >&2
  exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating the virtual environment $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --progress-bar off --quiet)

if "$venv/bin/python" -c 'import torch, torchvision' 2>/dev/null; then
  echo "==> keeping the installed $("$venv/bin/python" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)')"
else
  echo "==> installing $torch_pair"
  # shellcheck disable=SC2086  # the pair is two requirements on purpose
  "${pip[@]}" $torch_pair
fi

echo "==> installing geoloc[$extras]"
"${pip[@]}" --editable "$root[$extras]"
if [ "$extras" = "models,dev,ray" ]; then
  echo "==> installing diff-plonk 0.4 without its dependencies (PLONK parity tests)"
  "${pip[@]}" --no-deps diff-plonk==0.4
fi
if [ "$extras" = "models,dev,ray" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing Chromium for the browser tests (apt-get)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup.sh: no chromium on PATH; the browser tests will be skipped (install Debian's chromium package)" >&2
  fi
fi
echo "==> ready: $venv/bin/geoloc"
