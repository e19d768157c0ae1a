#!/usr/bin/env bash
# Set up everything the host tests need (ComfyUI, Forge, the browser test), from the host archives
# kept beside the project in ../shared/hosts (its prepare.sh unpacks them). Host code stays outside the
# project: it lands in the cache folder below, never in the repository.
#
#   eval "$(tools/setup_hosts.sh)"   # then: make test   (or simply: make test-hosts)
#
# Steps (each keeps a stamp and is skipped when its inputs are unchanged, so a second run takes seconds):
#   1. unpack ComfyUI and Forge into $KRONA_HOSTS_DIR          (../shared/hosts/prepare.sh)
#   2. the test venv (.venv, `make venv`) plus ComfyUI's test deps (requirements-comfy-test.txt) and the
#      comfyui-frontend-package version that ComfyUI's requirements.txt pins (browser test)
#   3. Forge's own venv, $KRONA_HOSTS_DIR/forge-venv (where tests/helpers/forge_server.py looks)
#   4. Chromium from the Debian package `chromium` (browser test; needs root or sudo, else a warning)
# Progress goes to stderr; stdout gets only the export lines, also written to $KRONA_HOSTS_DIR/env.sh.
#
# Environment: KRONA_HOSTS_DIR (default ${XDG_CACHE_HOME:-~/.cache}/krona-hosts), KRONA_SHARED (the
# folder holding hosts/prepare.sh, default ../shared beside the repository), PYTHON (python3), VENV (.venv).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
hosts_dir=${KRONA_HOSTS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/krona-hosts}
shared=${KRONA_SHARED:-$repo/../shared}
python=${PYTHON:-python3}
venv=${VENV:-.venv}

say() { printf '[setup_hosts] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
digest() { cat "$@" | sha256sum | cut -c1-16; }
# pip prints one warning per missing local index folder on some machines; keep real messages
pip_q() { "$@" --quiet 2> >(grep -v "^WARNING: Location 'file:" >&2); }

# the test venv's torch (requirements-dev.txt), held in both venvs: no host requirement may swap it
torch_pin=$(grep -E '^torch==' requirements-dev.txt | tr -d '[:space:]' || true)
[ -n "$torch_pin" ] || die "requirements-dev.txt pins no torch"

[ -f "$shared/hosts/prepare.sh" ] || die "no $shared/hosts/prepare.sh (set KRONA_SHARED to the folder holding hosts/)"
mkdir -p "$hosts_dir"
hosts_dir=$(cd "$hosts_dir" && pwd)

# 1. host sources -------------------------------------------------------------------------------------
say "unpacking the hosts into $hosts_dir"
exports=$(bash "$shared/hosts/prepare.sh" "$hosts_dir")
eval "$exports"
: "${COMFYUI_PATH:?prepare.sh printed no COMFYUI_PATH}" "${FORGE_PATH:?prepare.sh printed no FORGE_PATH}"
# Forge's installer also clones stable-diffusion-webui-assets (web fonts and their CSS) into repositories/,
# and its UI mode mounts that folder at start; the archives hold no copy and no test needs the fonts.
mkdir -p "$FORGE_PATH/repositories/stable-diffusion-webui-assets"

# 2. the test venv: ComfyUI's deps, the frontend and playwright (driving the Debian Chromium) -------------
make --no-print-directory -s venv PYTHON="$python" VENV="$venv" >&2
frontend=$(grep -E '^comfyui-frontend-package==' "$COMFYUI_PATH/requirements.txt" | head -n1 | tr -d '[:space:]') \
  || die "$COMFYUI_PATH/requirements.txt pins no comfyui-frontend-package"
stamp=$venv/.hosts-installed
want="$(digest requirements-comfy-test.txt) $frontend"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing requirements-comfy-test.txt and $frontend into $venv"
  printf '%s\n' "$torch_pin" > "$venv/.torch-constraint.txt"
  pip_q "$venv/bin/python" -m pip install -r requirements-comfy-test.txt "$frontend" -c "$venv/.torch-constraint.txt"
  echo "$want" > "$stamp"
fi

# 3. Forge's own venv ---------------------------------------------------------------------------------
# Forge pins an older stack (gradio 4.40, numpy 1.26, transformers 4.46), hence a venv of its own, with:
# - torch pinned to the CPU wheel (a constraint, since Forge lists torch unpinned);
# - a placeholder *record* of torchvision (a dist-info, no code): several of Forge's requirements
#   (open-clip-torch, timm, spandrel, facexlib, clean-fid) list torchvision, no torchvision wheel works
#   beside torch 2.13.0, and pip would otherwise replace torch by whatever the newest torchvision needs.
#   Nothing imports from it: tests/helpers/forge_server.py finds no torchvision module and puts the
#   stand-in from tests/host_stubs on Forge's path.
# - setuptools>=77.0.3,<81 instead of its setuptools==69.5.1 (too old for torch 2.13, still has
#   pkg_resources), and joblib (its soft-inpainting script needs it; unlisted).
recipe=1  # bump when the steps below change
forge_venv=$hosts_dir/forge-venv
stamp=$forge_venv/.krona-installed
want="$recipe $(digest "$FORGE_PATH/requirements_versions.txt") $torch_pin"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "building Forge's venv in $forge_venv (a few minutes)"
  rm -rf "$forge_venv"
  "$python" -m venv "$forge_venv"
  fpy=$forge_venv/bin/python
  pip_q "$fpy" -m pip install "$torch_pin"
  "$fpy" - <<'PY'
import sysconfig
from pathlib import Path

info = Path(sysconfig.get_paths()["purelib"]) / "torchvision-0.0.0.dist-info"
info.mkdir(exist_ok=True)
(info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.0.0\n"
                               "Summary: placeholder: tests/host_stubs/torchvision stands in at run time\n")
(info / "INSTALLER").write_text("krona-setup-hosts\n")
(info / "RECORD").write_text("")
PY
  sed -E 's/^setuptools==[^ #]*/setuptools>=77.0.3,<81/' "$FORGE_PATH/requirements_versions.txt" > "$forge_venv/requirements.txt"
  echo joblib >> "$forge_venv/requirements.txt"
  printf '%s\n' "$torch_pin" > "$forge_venv/constraints.txt"
  pip_q "$fpy" -m pip install -r "$forge_venv/requirements.txt" -c "$forge_venv/constraints.txt"
  "$fpy" -c "import torch, gradio; assert torch.__version__.startswith('2.13.0'), torch.__version__" \
    || die "Forge's venv has the wrong torch"
  echo "$want" > "$stamp"
fi

# 4. Chromium -----------------------------------------------------------------------------------------
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi
  if [ "$sudo" = none ]; then
    say "warning: no Chromium and no root: install the Debian package chromium for the browser test"
  else
    say "installing Chromium (Debian package chromium; log: $hosts_dir/apt.log)"
    { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
      > "$hosts_dir/apt.log" 2>&1 || { tail -n 20 "$hosts_dir/apt.log" >&2; die "apt-get install chromium failed"; }
  fi
fi

# the variables the tests read --------------------------------------------------------------------------
{
  echo "export COMFYUI_PATH=$COMFYUI_PATH"
  echo "export FORGE_PATH=$FORGE_PATH"
  echo "export FORGE_PYTHON=$forge_venv/bin/python"
} > "$hosts_dir/env.sh"
say "ready; the variables are in $hosts_dir/env.sh"
cat "$hosts_dir/env.sh"
