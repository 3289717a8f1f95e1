#!/usr/bin/env bash
# CI for the Python client: a venv (reused across runs), the package with its test extra,
# mypy --strict on the package, then pytest against the hookrelay binary in $HOOKRELAY_BIN.
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)

if [[ -z "${HOOKRELAY_BIN:-}" ]]; then
    echo "HOOKRELAY_BIN is not set: point it at a built hookrelay binary (the tests start it)" >&2
    exit 2
fi

venv="${HOOKRELAY_PY_VENV:-/var/tmp/hookrelay-ci-pyclient-venv}"
py="$venv/bin/python"
if [[ ! -x "$py" ]]; then
    echo "== creating $venv"
    python3 -m venv "$venv"
fi

# Reinstall only when the venv's editable install is not this checkout's or pyproject changed.
stamp="$venv/.hookrelay-client-stamp"
want="$here $(sha256sum pyproject.toml | cut -d' ' -f1)"
have=$(cat "$stamp" 2>/dev/null || true)
installed=$("$py" -c 'import hookrelay, httpx, pytest, mypy, os; print(os.path.dirname(os.path.dirname(hookrelay.__file__)))' 2>/dev/null || true)
if [[ "$have" != "$want" || "$installed" != "$here" ]]; then
    echo "== installing hookrelay-client[test] into $venv"
    "$py" -m pip install -q --disable-pip-version-check -e "$here[test]"
    echo "$want" > "$stamp"
else
    echo "== $venv is up to date"
fi

echo "== mypy --strict"
"$py" -m mypy --strict --cache-dir "$venv/.mypy_cache" hookrelay

echo "== pytest"
"$py" -m pytest -q -p no:cacheprovider tests
