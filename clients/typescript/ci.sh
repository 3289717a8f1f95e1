#!/usr/bin/env bash
# CI for the TypeScript client: install (from the lockfile), check the generated types match
# openapi.json, type-check (which includes the compile-time test of malformed events), build,
# and run the tests against a real hookrelay at $HOOKRELAY_BIN.
set -euo pipefail
cd "$(dirname "$0")"

: "${HOOKRELAY_BIN:?HOOKRELAY_BIN must point at a hookrelay binary (the tests start their own servers)}"
[ -x "$HOOKRELAY_BIN" ] || { echo "HOOKRELAY_BIN=$HOOKRELAY_BIN is not an executable file" >&2; exit 1; }
export HOOKRELAY_BIN

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "== installing Node.js and npm"
    apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl >/dev/null; }
echo "== node $(node --version), npm $(npm --version)"

echo "== npm ci"
npm ci --prefer-offline --no-audit --no-fund --loglevel=error

echo "== npm run check-generated"
npm run --silent check-generated

echo "== npm run typecheck"
npm run --silent typecheck

echo "== npm run build"
rm -rf dist
npm run --silent build

echo "== npm test"
npm test
