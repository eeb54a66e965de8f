//! Persistence of tenants, devices, credentials and application users, on SQLite or PostgreSQL.
//!
//! One code path for both databases through sqlx's `Any` driver with portable SQL (`$n` placeholders work on
//! both), migrations embedded and applied at start. The store keeps the API's JSON bodies as text plus the
//! columns it must look up or constrain by, and owns the invariants that need a transaction: versions
//! (`If-Match`), cascades (a device takes its credentials along, a tenant its devices), uniqueness of
//! (type, auth-id) per tenant and of trusted CA subject DNs, and registration limits. It knows nothing of
//! validation or hashing: the API layer hands it finished bodies.
//!
//! Layout: this file holds the store, its types and the transaction plumbing all resources share;
//! one module per resource holds its queries (`tenants`, `devices`, `credentials`, `applications`).

use std::path::Path;
use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Row};

use crate::changes::{Changes, Notice};

mod applications;
mod credentials;
mod devices;
mod tenants;
mod tokens;

pub use tokens::{NewToken, TokenRecord};

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
    let migrations = vec![
        Migration::new(
            1,
            "initial".into(),
            MigrationType::Simple,
            include_str!("../migrations/0001_initial.sql").into(),
            false,
        ),
        Migration::new(
            2,
            "tenant tokens".into(),
            MigrationType::Simple,
            include_str!("../migrations/0002_tenant_tokens.sql").into(),
            false,
        ),
    ];
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
