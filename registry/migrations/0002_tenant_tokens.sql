-- Tenant-scoped bearer tokens for the management API: only the SHA-256 of each token is kept.
CREATE TABLE tenant_tokens (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    hash TEXT NOT NULL,
    comment TEXT,
    created TEXT NOT NULL,
    expires TEXT
);

CREATE INDEX tenant_tokens_tenant ON tenant_tokens (tenant_id);
