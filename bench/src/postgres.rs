//! A fresh PostgreSQL database for one benchmark run, created in the server given by `--postgres-url`
//! (or `FERRY_TEST_POSTGRES_URL`) and dropped afterwards, so that runs never see each other's rows.

use anyhow::Context as _;
use sqlx::{Connection as _, PgConnection};
use url::Url;

/// A database of the benchmark's own, and a connection to the server beside it (not to the database, so
/// that it is not among the backends charged to the registry).
#[derive(Debug)]
pub struct FreshDatabase {
    admin: PgConnection,
    name: String,
    url: String,
    version: String,
}

impl FreshDatabase {
    /// Creates `ferry_bench_<pid>_<unix seconds>` through the admin URL.
    pub async fn create(admin_url: &str) -> anyhow::Result<Self> {
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = format!("ferry_bench_{}_{seconds}", std::process::id());
        let url = database_url(admin_url, &name)?;
        let mut admin = connect(admin_url).await?;
        // The name is ours (digits and underscores), so formatting it in is safe; CREATE DATABASE takes no
        // bind parameters.
        sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating database {name}"))?;
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut admin)
            .await
            .context("asking PostgreSQL for its version")?;
        Ok(Self {
            admin,
            name,
            url,
            version,
        })
    }

    /// The server's version, for the report.
    pub fn server_version(&self) -> &str {
        &self.version
    }

    /// Process ids of the server backends connected to this database (the registry's pool), whose CPU
    /// time is the database's share of each request when the server runs on this machine.
    pub async fn backend_pids(&mut self) -> anyhow::Result<Vec<u32>> {
        let pids: Vec<i32> =
            sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1")
                .bind(&self.name)
                .fetch_all(&mut self.admin)
                .await
                .context("listing the database's backends")?;
        Ok(pids
            .into_iter()
            .filter_map(|p| u32::try_from(p).ok())
            .collect())
    }

    /// The new database's URL, for the registry.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drops the database, ending connections still open to it (PostgreSQL 13+).
    pub async fn drop_database(mut self) -> anyhow::Result<()> {
        sqlx::query(&format!(
            r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#,
            self.name
        ))
        .execute(&mut self.admin)
        .await
        .with_context(|| format!("dropping database {}", self.name))?;
        let _ = self.admin.close().await;
        Ok(())
    }
}

async fn connect(admin_url: &str) -> anyhow::Result<PgConnection> {
    PgConnection::connect(admin_url)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {}", redacted(admin_url)))
}

fn database_url(admin_url: &str, name: &str) -> anyhow::Result<String> {
    let mut url = Url::parse(admin_url)
        .with_context(|| format!("--postgres-url {admin_url:?} is not a URL"))?;
    url.set_path(&format!("/{name}"));
    Ok(url.into())
}

/// The URL without its password, for logs and the report.
pub fn redacted(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.into()
        }
        Ok(u) => u.into(),
        Err(_) => "<not a URL>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_replaces_only_the_database() {
        assert_eq!(
            database_url(
                "postgres://postgres@127.0.0.1:55500/postgres?sslmode=disable",
                "b1"
            )
            .expect("url"),
            "postgres://postgres@127.0.0.1:55500/b1?sslmode=disable"
        );
    }

    #[test]
    fn passwords_stay_out_of_reports() {
        assert_eq!(
            redacted("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redacted("postgres://u@h/db"), "postgres://u@h/db");
    }
}
