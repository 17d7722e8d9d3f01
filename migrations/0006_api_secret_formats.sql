-- Secrets of format 'tls' (keys tls_cert and tls_key, PEM) beside 'generic'
-- and 'registry' (keys server, username, password and optionally email).
ALTER TABLE secrets DROP CONSTRAINT secrets_format_check;
ALTER TABLE secrets ADD CONSTRAINT secrets_format_check
    CHECK (format IN ('generic', 'registry', 'tls'));
