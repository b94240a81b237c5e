#!/bin/sh
# Make (or reuse) the virtual environment .venv and install mailticket into it, editable.
#   sh scripts/bootstrap.sh        the package: .venv/bin/mailticket
#   sh scripts/bootstrap.sh dev    plus the test and lint tools (pytest, ruff, mypy, psycopg)
# Why a venv: PEP 668 makes Debian's and Ubuntu's system Python refuse `pip install`, and
# venv is the standard library's own answer (see docs/development.md). On those systems
# `python3 -m venv` needs the pythonX.Y-venv package: installed here with apt-get when we are
# root (or through sudo), otherwise named in the error. PYTHON=/path/to/python3 picks another
# interpreter (3.11 or newer).
set -eu

cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=.venv

say() { echo "bootstrap: $*" >&2; }
die() { say "$*"; exit 1; }

case "${1:-}" in
  "") target=. ;;
  dev) target=.[dev] ;;
  *) die "usage: sh scripts/bootstrap.sh [dev]" ;;
esac

command -v "$python" >/dev/null 2>&1 || die "$python not found: install Python 3.11 or newer"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "mailticket needs Python 3.11 or newer; $python is $("$python" -V 2>&1)"

# Root installs directly; anyone else goes through sudo when there is one.
as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    return 1
  fi
}

install_venv_module() {
  pkg="python$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')-venv"
  command -v apt-get >/dev/null 2>&1 \
    || die "$python has no working venv module (ensurepip); install your system's venv package"
  say "$python cannot make a venv without the $pkg package; installing it"
  as_root apt-get update \
    && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$pkg" \
    || die "could not install $pkg: as root, run 'apt-get install -y $pkg', then this again"
}

if ! "$venv/bin/python" -c 'import pip' >/dev/null 2>&1; then
  rm -rf "$venv"  # a half-made one (venv without ensurepip) would be reused wrongly
  "$python" -c 'import ensurepip, venv' >/dev/null 2>&1 || install_venv_module
  "$python" -m venv "$venv" || die "'$python -m venv $venv' failed"
fi

"$venv/bin/python" -m pip install --disable-pip-version-check -q -e "$target"
say "installed into $venv ($("$venv/bin/python" -V))"
