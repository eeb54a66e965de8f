//! Application users (AMQP consumers) in the store.

use sqlx::Row;

use super::{is_unique_violation, new_version, Store, StoreError, Stored, Version};
use crate::changes::{Notice, Op};

impl Store {
    /// Creates or replaces an application user; returns its version and whether it was created.
    pub async fn put_application(
        &self,
        name: &str,
        body: &str,
        if_match: Option<&str>,
    ) -> Result<(Version, bool), StoreError> {
        // Two first writers of one name race on the INSERT; the loser retries as an update.
        for _ in 0..4 {
            let mut tx = self.begin().await?;
            match Self::swap_version(&mut tx, "applications", "application", &[name], if_match)
                .await
            {
                Ok(version) => {
                    sqlx::query("UPDATE applications SET body = $1 WHERE name = $2")
                        .bind(body)
                        .bind(name)
                        .execute(&mut *tx)
                        .await?;
                    self.commit(tx, &[Notice::application(Op::Updated, name)])
                        .await?;
                    return Ok((version, false));
                }
                Err(StoreError::NotFound(_)) => {
                    if if_match.is_some_and(|v| v.trim() != "*") {
                        return Err(StoreError::VersionMismatch);
                    }
                    let version = new_version();
                    let r = sqlx::query(
                        "INSERT INTO applications (name, version, body) VALUES ($1, $2, $3)",
                    )
                    .bind(name)
                    .bind(&version)
                    .bind(body)
                    .execute(&mut *tx)
                    .await;
                    match r {
                        Err(e) if is_unique_violation(&e) => continue,
                        r => {
                            r?;
                        }
                    }
                    self.commit(tx, &[Notice::application(Op::Created, name)])
                        .await?;
                    return Ok((version, true));
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict(format!(
            "application {name} is being written concurrently"
        )))
    }

    pub async fn get_application(&self, name: &str) -> Result<Stored, StoreError> {
        let row = sqlx::query("SELECT name, body, version FROM applications WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("application"))?;
        Ok(Stored {
            id: row.try_get(0)?,
            body: row.try_get(1)?,
            version: row.try_get(2)?,
            created: None,
            updated: None,
        })
    }

    pub async fn delete_application(
        &self,
        name: &str,
        if_match: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        Self::swap_version(&mut tx, "applications", "application", &[name], if_match).await?;
        sqlx::query("DELETE FROM applications WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        self.commit(tx, &[Notice::application(Op::Deleted, name)])
            .await?;
        Ok(())
    }

    pub async fn list_applications(&self) -> Result<Vec<Stored>, StoreError> {
        let rows = sqlx::query("SELECT name, body, version FROM applications ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Stored {
                    id: r.try_get(0)?,
                    body: r.try_get(1)?,
                    version: r.try_get(2)?,
                    created: None,
                    updated: None,
                })
            })
            .collect()
    }
}
