#!/usr/bin/env bash
# Start LocalStack on the host (no Docker) and leave it running; see localstack_host.py.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec python3 "$here/localstack_host.py" start "$@"
