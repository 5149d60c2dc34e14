#!/usr/bin/env bash
# A throwaway OpenLDAP slapd under $PEERS_DIR/ldap-<name>: ldap:// (with StartTLS) on
# 127.0.0.1:<port> and ldaps:// on 127.0.0.1:<tls-port>, a certificate signed by a test CA
# (ca.pem in that directory), suffix dc=example,dc=org and the test directory below.
#
#   ldap.sh init NAME PORT TLS_PORT   create it and start it; prints the ldap:// URL
#   ldap.sh start NAME                start it again with the same data and certificate
#   ldap.sh stop NAME                 stop it; a no-op if it is not running
#
# Directory: cn=admin,dc=example,dc=org/adminpw (root), cn=sark-service,ou=system/servicepw
# (the service account SARK searches with), and people:
#   test.user/testpass       member of cn=sark-admins,ou=groups
#   plain.user/plainpass     member of cn=staff,ou=groups (not mapped: viewer)
#   admin/ldap-admin-pass    same name as SARK's local admin, member of no group
set -euo pipefail
: "${PEERS_DIR:?PEERS_DIR must be set}"
usage="usage: ldap.sh init NAME PORT TLS_PORT | start NAME | stop NAME"
cmd=${1:?$usage}
name=${2:?$usage}
dir="$PEERS_DIR/ldap-$name"

wait_up() {
  for _ in $(seq 100); do
    ldapsearch -x -H "$(cat "$dir/url")" -b "" -s base >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "ldap.sh: slapd $name did not come up; see $dir/slapd.log" >&2
  return 1
}

launch() {
  slapd -F "$dir/slapd.d" -h "$(cat "$dir/url") $(cat "$dir/tls-url")" -d 0 >"$dir/slapd.log" 2>&1 &
  wait_up
}

case "$cmd" in
init)
  port=${3:?$usage}
  tls_port=${4:?$usage}
  rm -rf "$dir"
  mkdir -p "$dir/db" "$dir/slapd.d"
  echo "ldap://127.0.0.1:$port" >"$dir/url"
  echo "ldaps://127.0.0.1:$tls_port" >"$dir/tls-url"
  # A CA and a server certificate it signed (a self-signed leaf would be a CA used as
  # an end entity, which strict TLS clients refuse).
  openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj "/CN=SARK test LDAP CA" \
    -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 \
    -keyout "$dir/key.pem" -out "$dir/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$dir/server.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" \
    -CAcreateserial -days 7 -extfile "$dir/server.ext" -out "$dir/cert.pem" 2>/dev/null
  cat >"$dir/slapd.conf" <<CONF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile $dir/slapd.pid
argsfile $dir/slapd.args
TLSCertificateFile $dir/cert.pem
TLSCertificateKeyFile $dir/key.pem
database mdb
maxsize 104857600
suffix "dc=example,dc=org"
rootdn "cn=admin,dc=example,dc=org"
rootpw $(slappasswd -s adminpw)
directory $dir/db
index objectClass eq
index uid eq
index member eq
access to attrs=userPassword by self write by anonymous auth by * none
access to * by dn.exact="cn=sark-service,ou=system,dc=example,dc=org" read by self read by * none
CONF
  person() { # uid password cn
    cat <<LDIF
dn: uid=$1,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: $1
cn: $3
sn: $3
mail: $1@example.org
userPassword: $(slappasswd -s "$2")

LDIF
  }
  {
    cat <<LDIF
dn: dc=example,dc=org
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=people,dc=example,dc=org
objectClass: organizationalUnit
ou: people

dn: ou=groups,dc=example,dc=org
objectClass: organizationalUnit
ou: groups

dn: ou=system,dc=example,dc=org
objectClass: organizationalUnit
ou: system

dn: cn=sark-service,ou=system,dc=example,dc=org
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: sark-service
userPassword: $(slappasswd -s servicepw)

LDIF
    person test.user testpass "Test User"
    person plain.user plainpass "Plain User"
    person admin ldap-admin-pass "Directory Admin"
    cat <<LDIF
dn: cn=sark-admins,ou=groups,dc=example,dc=org
objectClass: groupOfNames
cn: sark-admins
member: uid=test.user,ou=people,dc=example,dc=org

dn: cn=staff,ou=groups,dc=example,dc=org
objectClass: groupOfNames
cn: staff
member: uid=plain.user,ou=people,dc=example,dc=org
LDIF
  } >"$dir/init.ldif"
  # Data first, then the conversion to cn=config (which needs the database to exist).
  slapadd -f "$dir/slapd.conf" -l "$dir/init.ldif" >/dev/null 2>&1
  slaptest -f "$dir/slapd.conf" -F "$dir/slapd.d" -Q
  launch
  cat "$dir/url"
  ;;
start) launch ;;
stop)
  if [ -f "$dir/slapd.pid" ]; then
    pid=$(cat "$dir/slapd.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    rm -f "$dir/slapd.pid"
  fi
  ;;
*) echo "$usage" >&2; exit 2 ;;
esac
