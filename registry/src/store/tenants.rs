//! Tenants in the store: their bodies, and the index of their trusted CAs' subject DNs.

use sqlx::Row;

use super::{
    is_unique_violation, new_version, now, stored, Store, StoreError, Stored, TenantKeys, Version,
};
use crate::changes::{Notice, Op};

impl Store {
    pub async fn count_tenants(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM tenants")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    pub async fn create_tenant(
        &self,
        id: &str,
        body: &str,
        keys: &TenantKeys,
    ) -> Result<Version, StoreError> {
        let mut tx = self.begin().await?;
        let version = new_version();
        let r =
            sqlx::query("INSERT INTO tenants (id, version, body, created) VALUES ($1, $2, $3, $4)")
                .bind(id)
                .bind(&version)
                .bind(body)
                .bind(now())
                .execute(&mut *tx)
                .await;
        match r {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!("tenant {id} already exists")))
            }
            r => {
                r?;
            }
        }
        Self::index_cas(&mut tx, id, keys).await?;
        self.commit(tx, &[Notice::tenant(Op::Created, id)]).await?;
        Ok(version)
    }

    pub async fn get_tenant(&self, id: &str) -> Result<Stored, StoreError> {
        let row = sqlx::query("SELECT body, version, created, updated FROM tenants WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("tenant"))?;
        Ok(Stored {
            id: id.to_owned(),
            body: row.try_get(0)?,
            version: row.try_get(1)?,
            created: row.try_get(2)?,
            updated: row.try_get(3)?,
        })
    }

    pub async fn update_tenant(
        &self,
        id: &str,
        body: &str,
        keys: &TenantKeys,
        if_match: Option<&str>,
    ) -> Result<Version, StoreError> {
        let mut tx = self.begin().await?;
        let version = Self::swap_version(&mut tx, "tenants", "tenant", &[id], if_match).await?;
        sqlx::query("UPDATE tenants SET body = $1, updated = $2 WHERE id = $3")
            .bind(body)
            .bind(now())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM trusted_cas WHERE tenant_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        Self::index_cas(&mut tx, id, keys).await?;
        self.commit(tx, &[Notice::tenant(Op::Updated, id)]).await?;
        Ok(version)
    }

    /// A CA subject DN may serve several tenants only when they share a trust anchor group.
    async fn index_cas(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: &str,
        keys: &TenantKeys,
    ) -> Result<(), StoreError> {
        for dn in &keys.subject_dns {
            let others = sqlx::query(
                "SELECT tenant_id, trust_anchor_group FROM trusted_cas WHERE subject_dn = $1 AND tenant_id <> $2",
            )
            .bind(dn)
            .bind(id)
            .fetch_all(&mut **tx)
            .await?;
            for other in others {
                let group: Option<String> = other.try_get(1)?;
                if group.is_none() || group != keys.trust_anchor_group {
                    let tenant: String = other.try_get(0)?;
                    return Err(StoreError::Conflict(format!(
                        "trusted CA {dn} is already used by tenant {tenant} outside this trust anchor group"
                    )));
                }
            }
            sqlx::query(
                "INSERT INTO trusted_cas (subject_dn, tenant_id, trust_anchor_group) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(dn)
            .bind(id)
            .bind(keys.trust_anchor_group.as_deref())
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Deletes a tenant with its devices, credentials, CA entries and tokens.
    pub async fn delete_tenant(&self, id: &str, if_match: Option<&str>) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        Self::swap_version(&mut tx, "tenants", "tenant", &[id], if_match).await?;
        for table in [
            "credential_keys",
            "credentials",
            "devices",
            "trusted_cas",
            "tenant_tokens",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM tenants WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        self.commit(tx, &[Notice::tenant(Op::Deleted, id)]).await?;
        Ok(())
    }

    pub async fn list_tenants(&self) -> Result<Vec<Stored>, StoreError> {
        let rows =
            sqlx::query("SELECT id, body, version, created, updated FROM tenants ORDER BY id")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(|r| stored(&r)).collect()
    }

    /// The tenants that trust a CA with this subject DN.
    pub async fn tenants_by_ca(&self, subject_dn: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT tenant_id FROM trusted_cas WHERE subject_dn = $1 ORDER BY tenant_id",
        )
        .bind(subject_dn)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(StoreError::from))
            .collect()
    }
}
