#!/usr/bin/env bash
# Regenerates the test PKI (committed; valid for 100 years): a CA, two server certificates for
# localhost / 127.0.0.1 (the second one proves a SIGHUP reload), a client certificate signed by
# the CA (CN alice) and one signed by an unrelated CA (rejected by mutual TLS). EC P-256 keys.
#   tests/testdata/tls/make_certs.sh
set -euo pipefail
cd "$(dirname "$0")"
DAYS=36500
ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() {  # ca NAME CN
  ec_key "$1.key"
  openssl req -x509 -new -key "$1.key" -sha256 -days $DAYS -subj "/CN=$2" -out "$1.pem"
}
leaf() {  # leaf NAME CA CN EXTENSIONS
  ec_key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$3" -out "$1.csr"
  printf '%s\n' "$4" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -sha256 \
    -days $DAYS -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
SERVER_EXT="subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
CLIENT_EXT="extendedKeyUsage=clientAuth"
ca ca "tandem test CA"
ca other_ca "unrelated test CA"
leaf server ca "tandem test server 1" "$SERVER_EXT"
leaf server2 ca "tandem test server 2" "$SERVER_EXT"
leaf client ca "alice" "$CLIENT_EXT"
leaf rogue_client other_ca "mallory" "$CLIENT_EXT"
rm -f ./*.srl
echo "written: $(ls ./*.pem ./*.key | tr '\n' ' ')"
