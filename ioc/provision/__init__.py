"""Device and service credentials for the broker: a small CA (``ioc pki``) and accounts + ACLs (``ioc devices``).

Owns the broker-side files an operator deploys next to Mosquitto: ``certs/`` (CA, server and client
certificates), the password file and the ACL file. docs/broker-security.md is the operator's guide.
"""
