-- The registry keeps each resource as the JSON body of Hono's management API, plus the columns it must
-- look up or constrain by. Portable SQL: the same file runs on SQLite and PostgreSQL.
CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    body TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT
);

-- Trusted CA subject DNs, so that a client certificate's issuer finds its tenant.
CREATE TABLE trusted_cas (
    subject_dn TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    trust_anchor_group TEXT,
    PRIMARY KEY (subject_dn, tenant_id)
);

CREATE TABLE devices (
    tenant_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    version TEXT NOT NULL,
    body TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT,
    PRIMARY KEY (tenant_id, device_id)
);

CREATE TABLE credentials (
    tenant_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    version TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (tenant_id, device_id)
);

-- (type, auth-id) is unique per tenant: this index both enforces that and serves the adapters' lookup.
CREATE TABLE credential_keys (
    tenant_id TEXT NOT NULL,
    cred_type TEXT NOT NULL,
    auth_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    PRIMARY KEY (tenant_id, cred_type, auth_id)
);

CREATE INDEX credential_keys_device ON credential_keys (tenant_id, device_id);

CREATE TABLE applications (
    name TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    body TEXT NOT NULL
);
