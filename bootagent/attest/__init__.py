"""`bootagent attest`: fetch the attested document and verify it as the IMDS documentation
says. `claims` holds the pure checks, `openssl` runs the openssl command (the only
cryptography), `command` ties them to IMDS. Nothing here is imported by a boot."""
