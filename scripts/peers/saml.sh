#!/usr/bin/env bash
# A real SAML 2.0 IdP (PyPI pysaml2 with Debian xmlsec1, run by scripts/peers/saml-idp.py)
# under $PEERS_DIR/saml-<name>, entity ID http://127.0.0.1:<port>/idp/metadata. It trusts
# one SP: entity ID SP_ENTITY_ID with its ACS at ACS_URL.
#
#   saml.sh start NAME PORT SP_ENTITY_ID ACS_URL   install pysaml2 in a venv if needed,
#                                                  start it; prints the metadata URL
#   saml.sh stop NAME                              stop it; a no-op if it is not running
set -euo pipefail
: "${PEERS_DIR:?PEERS_DIR must be set}"
usage="usage: saml.sh start NAME PORT SP_ENTITY_ID ACS_URL | stop NAME"
here=$(cd "$(dirname "$0")" && pwd)
cmd=${1:?$usage}
name=${2:?$usage}
dir="$PEERS_DIR/saml-$name"
case "$cmd" in
start)
  port=${3:?$usage}
  sp=${4:?$usage}
  acs=${5:?$usage}
  mkdir -p "$dir"
  if [ ! -x "$dir/venv/bin/python" ] || ! "$dir/venv/bin/python" -c 'import saml2' 2>/dev/null; then
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install -q --disable-pip-version-check pysaml2==7.5.5 >/dev/null
  fi
  cp "$here/saml-idp.py" "$dir/idp.py"
  # The IdP's signing key, and another that no SP trusts (for the unknown-key test).
  for key in idp other; do
    [ -f "$dir/$key.key" ] || openssl req -x509 -newkey rsa:2048 -nodes -days 30 \
      -subj "/CN=sark-test-$key" -keyout "$dir/$key.key" -out "$dir/$key.crt" 2>/dev/null
  done
  # The SP under test, and another one (whose audience the misaddressed variant names).
  cat >"$dir/sp.xml" <<XML
<?xml version="1.0"?>
<md:EntitiesDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata">
  <md:EntityDescriptor entityID="$sp">
    <md:SPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
      <md:NameIDFormat>urn:oasis:names:tc:SAML:2.0:nameid-format:persistent</md:NameIDFormat>
      <md:AssertionConsumerService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" Location="$acs" index="0" isDefault="true"/>
    </md:SPSSODescriptor>
  </md:EntityDescriptor>
  <md:EntityDescriptor entityID="urn:another:sp">
    <md:SPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
      <md:NameIDFormat>urn:oasis:names:tc:SAML:2.0:nameid-format:persistent</md:NameIDFormat>
      <md:AssertionConsumerService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" Location="https://another.example.org/acs" index="0" isDefault="true"/>
    </md:SPSSODescriptor>
  </md:EntityDescriptor>
</md:EntitiesDescriptor>
XML
  SAML_PORT=$port SAML_DIR=$dir nohup "$dir/venv/bin/python" -W ignore "$dir/idp.py" >"$dir/idp.log" 2>&1 &
  echo $! >"$dir/idp.pid"
  metadata="http://127.0.0.1:$port/idp/metadata"
  for _ in $(seq 200); do
    curl -sf -o /dev/null "$metadata" && break
    sleep 0.05
  done
  curl -sf -o /dev/null "$metadata" || {
    echo "saml.sh: the IdP did not come up; see $dir/idp.log" >&2; exit 1; }
  echo "$metadata"
  ;;
stop)
  if [ -f "$dir/idp.pid" ]; then
    kill "$(cat "$dir/idp.pid")" 2>/dev/null || true
    rm -f "$dir/idp.pid"
  fi
  ;;
*) echo "$usage" >&2; exit 2 ;;
esac
