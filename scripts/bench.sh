#!/usr/bin/env bash
# The benchmark harness (not part of the tests): ceiling, naive peer and this service side by side, one run.
# Run it on an otherwise idle machine; it writes docs/benchmarks.json. Arguments go to benchmarks/run.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m benchmarks.run "$@"
