# Sourced by scripts/*: creates the project's virtual environment on first use and keeps
# it in step with pyproject.toml. Needs only python3 (>= 3.11) with venv on the machine.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${FDBWORKERS_VENV:-$root/.venv}"
py=${PYTHON:-python3}

say() { echo "fdbworkers: $*" >&2; }

if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  say "Python 3.11 or newer is required (found: $("$py" --version 2>&1 || echo none))."
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  say "creating the virtual environment in $venv"
  if ! "$py" -m venv "$venv" 2>/dev/null; then
    say "python3 -m venv failed; on Debian/Ubuntu run: apt-get install python3-venv"
    exit 1
  fi
fi
stamp="$venv/.fdbworkers-installed"
extras=${FDBWORKERS_EXTRAS:-test}
want="$extras $(cksum < "$root/pyproject.toml")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing fdbworkers[$extras] and its dependencies into $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[$extras]" >&2
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
