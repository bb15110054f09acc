#!/usr/bin/env bash
# Stop the LocalStack that start.sh started (by the PID in its pid file).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec python3 "$here/localstack_host.py" stop "$@"
