//! Persistence of tenants, devices, credentials and application users, on SQLite or PostgreSQL.
//!
//! One code path for both databases through sqlx's `Any` driver with portable SQL (`$n` placeholders work on
//! both), migrations embedded and applied at start. The store keeps the API's JSON bodies as text plus the
//! columns it must look up or constrain by, and owns the invariants that need a transaction: versions
//! (`If-Match`), cascades (a device takes its credentials along, a tenant its devices), uniqueness of
//! (type, auth-id) per tenant and of trusted CA subject DNs, and registration limits. It knows nothing of
//! validation or hashing: the API layer hands it finished bodies.

use std::path::Path;
use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Row};

use crate::changes::{Changes, Notice, Op};

/// A row's version, as sent in `ETag` and compared with `If-Match`.
pub type Version = String;

/// What can go wrong in the store; the API maps each to a status in one place.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("resource version does not match If-Match")]
    VersionMismatch,
    #[error("{0}")]
    LimitExceeded(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A stored resource: its JSON body, version and timestamps.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: String,
    pub body: String,
    pub version: Version,
    pub created: Option<String>,
    pub updated: Option<String>,
}

/// Keys a tenant body contributes to the CA index.
#[derive(Debug, Clone, Default)]
pub struct TenantKeys {
    pub subject_dns: Vec<String>,
    pub trust_anchor_group: Option<String>,
}

/// Registration limits of a tenant, `None` = unlimited.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub max_devices: Option<u64>,
    pub max_credentials_per_device: Option<u64>,
}

/// The embedded migrations, in order. Built by hand rather than with `sqlx::migrate!` so that the build does
/// not need sqlx's macro crate (a second compile of both database drivers).
fn migrator() -> sqlx::migrate::Migrator {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    let migrations = vec![Migration::new(
        1,
        "initial".into(),
        MigrationType::Simple,
        include_str!("../migrations/0001_initial.sql").into(),
        false,
    )];
    Migrator {
        migrations: migrations.into(),
        ..Migrator::DEFAULT
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    kind: Backend,
    url: String,
    /// Where committed writes are announced (see `changes.rs`).
    changes: Changes,
}

/// Which database the store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

fn new_version() -> Version {
    uuid::Uuid::new_v4().simple().to_string()
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `If-Match` semantics: absent or `*` matches anything; otherwise one of the listed versions must match.
pub fn version_matches(if_match: Option<&str>, current: &str) -> bool {
    match if_match {
        None => true,
        Some(v) => v.split(',').map(str::trim).any(|tag| {
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            tag == "*" || tag.trim_matches('"') == current
        }),
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Store {
    /// Opens (and migrates) the database: `url` if given (`postgres://…` or `sqlite://…`), else a SQLite
    /// file `registry.db` in `data_dir`.
    pub async fn open(url: Option<&str>, data_dir: &Path) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let url = match url {
            Some(u) => u.to_owned(),
            None => {
                std::fs::create_dir_all(data_dir).map_err(|e| {
                    StoreError::Database(sqlx::Error::Configuration(
                        format!("cannot create data dir {}: {e}", data_dir.display()).into(),
                    ))
                })?;
                format!(
                    "sqlite://{}?mode=rwc",
                    data_dir.join("registry.db").display()
                )
            }
        };
        let kind = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(if kind == Backend::Sqlite { 4 } else { 16 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if kind == Backend::Sqlite {
                        // WAL lets readers run beside the single writer; foreign keys are not used.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 5000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        migrator().run(&pool).await?;
        Ok(Self {
            pool,
            kind,
            url,
            changes: Changes::default(),
        })
    }

    pub fn backend(&self) -> Backend {
        self.kind
    }

    /// Where this store announces its committed writes (and, on PostgreSQL, every replica's).
    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    /// The database URL (for the PostgreSQL change relay's own connection).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Commits `tx` and announces `notices`. On PostgreSQL they are sent with `NOTIFY` inside the
    /// transaction, so every replica hears them when, and only if, the write commits (PostgreSQL drops a
    /// repeated identical notice within one transaction, which loses nothing here); on SQLite they go
    /// to this process's subscribers after the commit.
    async fn commit(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Any>,
        notices: &[Notice],
    ) -> Result<(), StoreError> {
        if self.kind == Backend::Postgres {
            for notice in notices {
                let payload = serde_json::to_string(notice).map_err(|e| {
                    StoreError::Database(sqlx::Error::Protocol(format!("change notice: {e}")))
                })?;
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(crate::changes::PG_CHANNEL)
                    .bind(payload)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        } else {
            tx.commit().await?;
            for notice in notices {
                self.changes.publish(notice.clone());
            }
        }
        Ok(())
    }

    /// A write transaction. On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`): a deferred
    /// transaction that reads and then writes fails with SQLITE_BUSY when another writer committed in
    /// between, which `busy_timeout` cannot wait out.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.kind {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// Checks `If-Match` against a row's version and swaps in a new version, in `tx`.
    ///
    /// The compare-and-swap `UPDATE ... WHERE version = current` takes the row lock, so of two writers that
    /// read the same version only one finds its row; the other re-reads (READ COMMITTED sees the winner's
    /// commit) and then fails `If-Match` or, without `If-Match`, goes on after the winner. Everything the
    /// caller writes afterwards in `tx` is serialized behind that lock.
    async fn swap_version(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        table: &'static str,
        what: &'static str,
        key: &[&str],
        if_match: Option<&str>,
    ) -> Result<Version, StoreError> {
        let cols: &[&str] = match table {
            "tenants" => &["id"],
            "applications" => &["name"],
            _ => &["tenant_id", "device_id"],
        };
        let cond = |first: usize| {
            cols.iter()
                .enumerate()
                .map(|(i, c)| format!("{c} = ${}", first + i))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let select = format!("SELECT version FROM {table} WHERE {}", cond(1));
        let update = format!(
            "UPDATE {table} SET version = $1 WHERE {} AND version = ${}",
            cond(2),
            cols.len() + 2
        );
        for _ in 0..8 {
            let mut q = sqlx::query(&select);
            for k in key {
                q = q.bind(*k);
            }
            let current: String = q
                .fetch_optional(&mut **tx)
                .await?
                .ok_or(StoreError::NotFound(what))?
                .try_get(0)?;
            if !version_matches(if_match, &current) {
                return Err(StoreError::VersionMismatch);
            }
            let version = new_version();
            let mut q = sqlx::query(&update).bind(&version);
            for k in key {
                q = q.bind(*k);
            }
            if q.bind(&current).execute(&mut **tx).await?.rows_affected() == 1 {
                return Ok(version);
            }
        }
        Err(StoreError::VersionMismatch)
    }

    /// Whether the database answers (for `/ready`).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    // ---- tenants ----

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

    /// Deletes a tenant with its devices, credentials and CA entries.
    pub async fn delete_tenant(&self, id: &str, if_match: Option<&str>) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        Self::swap_version(&mut tx, "tenants", "tenant", &[id], if_match).await?;
        for table in ["credential_keys", "credentials", "devices", "trusted_cas"] {
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

    // ---- devices ----

    async fn require_tenant(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        tenant: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("SELECT 1 FROM tenants WHERE id = $1")
            .bind(tenant)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or(StoreError::NotFound("tenant"))?;
        Ok(())
    }

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

    // ---- credentials ----

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

    // ---- application users ----

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

fn stored(r: &sqlx::any::AnyRow) -> Result<Stored, StoreError> {
    Ok(Stored {
        id: r.try_get(0)?,
        body: r.try_get(1)?,
        version: r.try_get(2)?,
        created: r.try_get(3)?,
        updated: r.try_get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_semantics() {
        assert!(version_matches(None, "v1"));
        assert!(version_matches(Some("*"), "v1"));
        assert!(version_matches(Some("\"v1\""), "v1"));
        assert!(version_matches(Some("v1"), "v1"));
        assert!(version_matches(Some("W/\"v1\""), "v1"));
        assert!(version_matches(Some("\"v0\", \"v1\""), "v1"));
        assert!(!version_matches(Some("\"v2\""), "v1"));
        assert!(!version_matches(Some(""), "v1"));
    }
}
