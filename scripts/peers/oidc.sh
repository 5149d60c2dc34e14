#!/usr/bin/env bash
# A real OpenID Connect provider (npm oidc-provider, run by scripts/peers/oidc-server.mjs)
# under $PEERS_DIR/oidc-<name>, issuer http://127.0.0.1:<port>.
#
#   oidc.sh start NAME PORT REDIRECT_URIS   install the npm package if needed, start it;
#                                           prints the issuer URL
#   oidc.sh stop NAME                       stop it; a no-op if it is not running
set -euo pipefail
: "${PEERS_DIR:?PEERS_DIR must be set}"
usage="usage: oidc.sh start NAME PORT REDIRECT_URIS | stop NAME"
here=$(cd "$(dirname "$0")" && pwd)
cmd=${1:?$usage}
name=${2:?$usage}
dir="$PEERS_DIR/oidc-$name"
case "$cmd" in
start)
  port=${3:?$usage}
  redirects=${4:?$usage}
  mkdir -p "$dir"
  cp "$here/oidc-server.mjs" "$dir/server.mjs"
  if [ ! -d "$dir/node_modules/oidc-provider" ]; then
    echo '{"name":"sark-oidc-peer","private":true,"type":"module"}' >"$dir/package.json"
    (cd "$dir" && npm install --silent --no-audit --no-fund oidc-provider@9.13.3 >/dev/null)
  fi
  OIDC_PORT=$port OIDC_REDIRECT_URIS=$redirects nohup node "$dir/server.mjs" >"$dir/server.log" 2>&1 &
  echo $! >"$dir/server.pid"
  issuer="http://127.0.0.1:$port"
  for _ in $(seq 200); do
    curl -sf "$issuer/.well-known/openid-configuration" >/dev/null && break
    sleep 0.05
  done
  curl -sf "$issuer/.well-known/openid-configuration" >/dev/null || {
    echo "oidc.sh: the provider did not come up; see $dir/server.log" >&2; exit 1; }
  echo "$issuer"
  ;;
stop)
  if [ -f "$dir/server.pid" ]; then
    kill "$(cat "$dir/server.pid")" 2>/dev/null || true
    rm -f "$dir/server.pid"
  fi
  ;;
*) echo "$usage" >&2; exit 2 ;;
esac
