//! A device's credentials in the store: one body per device, and the (type, auth-id) keys that must
//! be unique in the tenant.

use sqlx::Row;

use super::{is_unique_violation, Limits, Store, StoreError, Stored, Version};
use crate::changes::{Notice, Op};

impl Store {
    pub async fn get_credentials(&self, tenant: &str, device: &str) -> Result<Stored, StoreError> {
        let row = sqlx::query(
            "SELECT device_id, body, version FROM credentials WHERE tenant_id = $1 AND device_id = $2",
        )
        .bind(tenant)
        .bind(device)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("device"))?;
        Ok(Stored {
            id: row.try_get(0)?,
            body: row.try_get(1)?,
            version: row.try_get(2)?,
            created: None,
            updated: None,
        })
    }

    /// Replaces a device's credentials. `keys` are the (type, auth-id) pairs of `body`; each must be unused
    /// by the tenant's other devices.
    pub async fn set_credentials(
        &self,
        tenant: &str,
        device: &str,
        body: &str,
        keys: &[(String, String)],
        limits: Limits,
        if_match: Option<&str>,
    ) -> Result<Version, StoreError> {
        if let Some(max) = limits.max_credentials_per_device {
            if keys.len() as u64 > max {
                return Err(StoreError::LimitExceeded(format!(
                    "a device of this tenant may have at most {max} credentials"
                )));
            }
        }
        let mut tx = self.begin().await?;
        let version = Self::swap_version(
            &mut tx,
            "credentials",
            "device",
            &[tenant, device],
            if_match,
        )
        .await?;
        sqlx::query("DELETE FROM credential_keys WHERE tenant_id = $1 AND device_id = $2")
            .bind(tenant)
            .bind(device)
            .execute(&mut *tx)
            .await?;
        for (cred_type, auth_id) in keys {
            let r = sqlx::query(
                "INSERT INTO credential_keys (tenant_id, cred_type, auth_id, device_id) VALUES ($1, $2, $3, $4)",
            )
            .bind(tenant)
            .bind(cred_type)
            .bind(auth_id)
            .bind(device)
            .execute(&mut *tx)
            .await;
            match r {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict(format!(
                        "credentials of type {cred_type} with auth-id {auth_id} already exist in this tenant"
                    )))
                }
                r => {
                    r?;
                }
            }
        }
        sqlx::query("UPDATE credentials SET body = $1 WHERE tenant_id = $2 AND device_id = $3")
            .bind(body)
            .bind(tenant)
            .bind(device)
            .execute(&mut *tx)
            .await?;
        self.commit(tx, &[Notice::credentials(Op::Updated, tenant, device)])
            .await?;
        Ok(version)
    }

    /// The device that owns credentials of (type, auth-id), and its whole credentials body.
    pub async fn find_credentials(
        &self,
        tenant: &str,
        cred_type: &str,
        auth_id: &str,
    ) -> Result<Stored, StoreError> {
        let row = sqlx::query(
            "SELECT c.device_id, c.body, c.version FROM credential_keys k \
             JOIN credentials c ON c.tenant_id = k.tenant_id AND c.device_id = k.device_id \
             WHERE k.tenant_id = $1 AND k.cred_type = $2 AND k.auth_id = $3",
        )
        .bind(tenant)
        .bind(cred_type)
        .bind(auth_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("credentials"))?;
        Ok(Stored {
            id: row.try_get(0)?,
            body: row.try_get(1)?,
            version: row.try_get(2)?,
            created: None,
            updated: None,
        })
    }
}
