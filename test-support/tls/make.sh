#!/bin/sh
# Makes the test certificates of README.md (P-256 keys, 100 years).
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
openssl req -x509 $ec -keyout "$tmp/ca.key" -out ca.pem -days 36500 -subj "/CN=stream-rpc test CA"
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' >"$tmp/server.ext"
printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n' >"$tmp/client.ext"
for who in server client; do
    openssl req $ec -keyout "$who.key" -out "$tmp/$who.csr" -subj "/CN=stream-rpc test $who"
    openssl x509 -req -in "$tmp/$who.csr" -CA ca.pem -CAkey "$tmp/ca.key" -CAcreateserial \
        -CAserial "$tmp/ca.srl" -out "$who.pem" -days 36500 -extfile "$tmp/$who.ext"
done
openssl req -x509 $ec -keyout "$tmp/other.key" -out other-ca.pem -days 36500 -subj "/CN=another CA"
