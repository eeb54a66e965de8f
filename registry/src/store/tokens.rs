//! Tenant-scoped tokens of the management API in the store (docs/registry.md "Tenant tokens"). Only a
//! token's SHA-256 is kept; the token itself is shown once, when it is made.

use sqlx::Row;

use super::{now, Store, StoreError};

/// A tenant token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub tenant: String,
    /// Hex SHA-256 of the whole token.
    pub hash: String,
    pub comment: Option<String>,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339; `None`: until deleted.
    pub expires: Option<String>,
}

/// What a new token is made of.
#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    pub id: &'a str,
    pub tenant: &'a str,
    pub hash: &'a str,
    pub comment: Option<&'a str>,
    pub expires: Option<&'a str>,
}

fn record(r: &sqlx::any::AnyRow) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id: r.try_get(0)?,
        tenant: r.try_get(1)?,
        hash: r.try_get(2)?,
        comment: r.try_get(3)?,
        created: r.try_get(4)?,
        expires: r.try_get(5)?,
    })
}

const COLUMNS: &str = "id, tenant_id, hash, comment, created, expires";

impl Store {
    /// Stores a token of an existing tenant that holds fewer than `max_per_tenant` tokens.
    pub async fn create_token(
        &self,
        token: &NewToken<'_>,
        max_per_tenant: u64,
    ) -> Result<TokenRecord, StoreError> {
        let mut tx = self.begin().await?;
        Self::require_tenant(&mut tx, token.tenant).await?;
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM tenant_tokens WHERE tenant_id = $1")
            .bind(token.tenant)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if u64::try_from(n).unwrap_or(0) >= max_per_tenant {
            return Err(StoreError::LimitExceeded(format!(
                "tenant {} already has {max_per_tenant} tokens: delete one first",
                token.tenant
            )));
        }
        let created = now();
        sqlx::query(
            "INSERT INTO tenant_tokens (id, tenant_id, hash, comment, created, expires) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token.id)
        .bind(token.tenant)
        .bind(token.hash)
        .bind(token.comment)
        .bind(&created)
        .bind(token.expires)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(TokenRecord {
            id: token.id.to_owned(),
            tenant: token.tenant.to_owned(),
            hash: token.hash.to_owned(),
            comment: token.comment.map(str::to_owned),
            created,
            expires: token.expires.map(str::to_owned),
        })
    }

    /// The token with this id, if there is one.
    pub async fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM tenant_tokens WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(record)
        .transpose()
    }

    /// The tokens of an existing tenant, oldest first.
    pub async fn list_tokens(&self, tenant: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        Self::require_tenant(&mut tx, tenant).await?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM tenant_tokens WHERE tenant_id = $1 ORDER BY created, id"
        ))
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(record).collect()
    }

    /// Deletes a tenant's token: it is refused from the next request on.
    pub async fn delete_token(&self, tenant: &str, id: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM tenant_tokens WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("token"));
        }
        Ok(())
    }
}
