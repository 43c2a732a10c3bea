#!/usr/bin/env bash
# The one front door: ./run.sh [COMMAND] [key=value ...]   (./run.sh --help lists everything)
# First use builds .venv here and installs the project into it; later calls reuse it and reinstall
# only when pyproject.toml changed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$repo/.venv"
stamp="$venv/.installed-pyproject.sha256"
want="$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)"

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "run.sh: setting up $venv (first use or pyproject.toml changed; takes a few minutes)..." >&2
  python3 -m venv "$venv"
  # pip compiles the installed files' bytecode on one core; compileall below does it on all of them instead.
  if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile -e "$repo[dev,glove,minilm,effnet]" >&2; then
    # torch's x86_64 wheel is a CUDA build: the venv takes about 7 GB, so a full disk is the usual cause.
    free_gb="$(df -Pk "$venv" | awk 'NR==2 {printf "%.1f", $4 / 1048576}')"
    echo "run.sh: installing into $venv failed (pip's error is above; $free_gb GB free there, the install needs about 7 GB); fix that and rerun ./run.sh, which retries the install" >&2
    exit 1
  fi
  # A file that does not compile (some packages ship Python 2 samples) is skipped, as pip skips it.
  "$venv/bin/python" -m compileall -q -j 0 "$venv/lib" >/dev/null 2>&1 || true
  echo "$want" > "$stamp"
fi

export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ "${1:-}" = "test" ]; then
  shift
  cd "$repo"
  exec "$venv/bin/python" -m pytest --durations=15 "$@"  # the 15 slowest tests close the report
fi
exec "$venv/bin/python" -m solution "$@"
