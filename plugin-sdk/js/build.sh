#!/usr/bin/env bash
# Build a JavaScript sluice plugin folder into a component (see build.mjs):
#   plugin-sdk/js/build.sh PLUGIN_DIR [OUT.wasm]
set -euo pipefail
exec node "$(dirname "${BASH_SOURCE[0]}")/build.mjs" "$@"
