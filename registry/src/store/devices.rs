//! Devices in the store: each with its credentials set, within the tenant's registration limits.

use sqlx::Row;

use super::{
    is_unique_violation, new_version, now, stored, Limits, Store, StoreError, Stored, Version,
};
use crate::changes::{Notice, Op};

impl Store {
    /// Creates a device with an empty credentials set.
    pub async fn create_device(
        &self,
        tenant: &str,
        device: &str,
        body: &str,
        limits: Limits,
    ) -> Result<Version, StoreError> {
        let mut tx = self.begin().await?;
        Self::require_tenant(&mut tx, tenant).await?;
        if let Some(max) = limits.max_devices {
            // Lock the tenant row so that concurrent creations count one after the other.
            sqlx::query("UPDATE tenants SET version = version WHERE id = $1")
                .bind(tenant)
                .execute(&mut *tx)
                .await?;
            let n: i64 = sqlx::query("SELECT COUNT(*) FROM devices WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            if u64::try_from(n).unwrap_or(u64::MAX) >= max {
                return Err(StoreError::LimitExceeded(format!(
                    "tenant {tenant} may register at most {max} devices"
                )));
            }
        }
        let version = new_version();
        let r = sqlx::query(
            "INSERT INTO devices (tenant_id, device_id, version, body, created) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(tenant)
        .bind(device)
        .bind(&version)
        .bind(body)
        .bind(now())
        .execute(&mut *tx)
        .await;
        match r {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "device {device} already exists"
                )))
            }
            r => {
                r?;
            }
        }
        sqlx::query("INSERT INTO credentials (tenant_id, device_id, version, body) VALUES ($1, $2, $3, '[]')")
            .bind(tenant)
            .bind(device)
            .bind(new_version())
            .execute(&mut *tx)
            .await?;
        self.commit(tx, &[Notice::device(Op::Created, tenant, device)])
            .await?;
        Ok(version)
    }

    pub async fn get_device(&self, tenant: &str, device: &str) -> Result<Stored, StoreError> {
        let row = sqlx::query(
            "SELECT device_id, body, version, created, updated FROM devices WHERE tenant_id = $1 AND device_id = $2",
        )
        .bind(tenant)
        .bind(device)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("device"))?;
        stored(&row)
    }

    pub async fn update_device(
        &self,
        tenant: &str,
        device: &str,
        body: &str,
        if_match: Option<&str>,
    ) -> Result<Version, StoreError> {
        let mut tx = self.begin().await?;
        let version =
            Self::swap_version(&mut tx, "devices", "device", &[tenant, device], if_match).await?;
        sqlx::query(
            "UPDATE devices SET body = $1, updated = $2 WHERE tenant_id = $3 AND device_id = $4",
        )
        .bind(body)
        .bind(now())
        .bind(tenant)
        .bind(device)
        .execute(&mut *tx)
        .await?;
        self.commit(tx, &[Notice::device(Op::Updated, tenant, device)])
            .await?;
        Ok(version)
    }

    /// Deletes a device and its credentials.
    pub async fn delete_device(
        &self,
        tenant: &str,
        device: &str,
        if_match: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        Self::swap_version(&mut tx, "devices", "device", &[tenant, device], if_match).await?;
        for table in ["credential_keys", "credentials", "devices"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE tenant_id = $1 AND device_id = $2"
            ))
            .bind(tenant)
            .bind(device)
            .execute(&mut *tx)
            .await?;
        }
        self.commit(
            tx,
            &[
                Notice::device(Op::Deleted, tenant, device),
                Notice::credentials(Op::Deleted, tenant, device),
            ],
        )
        .await?;
        Ok(())
    }

    /// Deletes every device of a tenant (and their credentials); returns how many were deleted.
    pub async fn delete_all_devices(&self, tenant: &str) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        Self::require_tenant(&mut tx, tenant).await?;
        for table in ["credential_keys", "credentials"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1"))
                .bind(tenant)
                .execute(&mut *tx)
                .await?;
        }
        let ids: Vec<String> = sqlx::query("SELECT device_id FROM devices WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let n = sqlx::query("DELETE FROM devices WHERE tenant_id = $1")
            .bind(tenant)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let deleted: Vec<Notice> = ids
            .iter()
            .flat_map(|d| {
                [
                    Notice::device(Op::Deleted, tenant, d),
                    Notice::credentials(Op::Deleted, tenant, d),
                ]
            })
            .collect();
        self.commit(tx, &deleted).await?;
        Ok(n)
    }

    pub async fn list_devices(&self, tenant: &str) -> Result<Vec<Stored>, StoreError> {
        let rows = sqlx::query(
            "SELECT device_id, body, version, created, updated FROM devices WHERE tenant_id = $1 ORDER BY device_id",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|r| stored(&r)).collect()
    }
}
