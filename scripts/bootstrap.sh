#!/usr/bin/env bash
# Create .venv with Python 3.11 and install the pinned dependencies (requirements.lock).
# Re-running is quick: it reinstalls only when the lock file changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  for candidate in python3.11 /usr/bin/python3.11 /usr/local/bin/python3.11; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON=$candidate; break; fi
  done
fi
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "error: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

if [[ ! -x .venv/bin/python ]]; then
  echo "==> creating .venv with $("$PYTHON" --version)" >&2
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.lock | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "==> installing pinned dependencies (requirements.lock)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.lock
  echo "$want" > "$stamp"
else
  echo "==> dependencies up to date" >&2
fi

# The client package (client/: `portal_client`, the `portal` CLI), editable; its own
# dependencies (httpx, click) are pinned in the lock already.
if ! .venv/bin/python -c 'import portal_client' 2>/dev/null; then
  echo "==> installing the client package (client/)" >&2
  .venv/bin/python -m pip install --quiet --no-deps -e client
fi
