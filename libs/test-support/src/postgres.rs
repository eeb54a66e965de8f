//! A fresh PostgreSQL database per test, created in the throwaway cluster `scripts/test` starts.
//!
//! Each call creates its own database so tests run in parallel without seeing each other's rows.
//! Databases are not dropped on `Drop` (that would need an async runtime in a destructor); the
//! whole cluster is deleted when `scripts/test` exits, and [`PgDatabase::drop_database`] is there
//! for tests that want to clean up early.

use std::env;

use sqlx::{Connection, PgConnection};
use url::Url;

/// The variable `scripts/test` sets to the admin URL of its throwaway cluster.
pub const POSTGRES_URL_ENV: &str = "FERRY_TEST_POSTGRES_URL";

/// A database of its own for one test.
#[derive(Debug)]
pub struct PgDatabase {
    name: String,
    url: String,
    admin_url: String,
}

impl PgDatabase {
    /// The connection URL of this database, e.g. `postgres://postgres@127.0.0.1:55432/ferry_test_…`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name, `ferry_test_<uuid>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database, closing any connections still open to it.
    pub async fn drop_database(self) {
        let mut admin = connect_admin(&self.admin_url).await;
        // FORCE (PostgreSQL 13+) ends pools the test forgot to close instead of failing.
        sqlx::query(&format!(
            r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#,
            self.name
        ))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|err| panic!("dropping test database {}: {err}", self.name));
        close(admin).await;
    }
}

/// Creates an empty database named `ferry_test_<uuid>` in the cluster named by
/// `FERRY_TEST_POSTGRES_URL`.
///
/// Panics if the variable is unset or the server cannot be reached: a PostgreSQL test must fail,
/// not skip, where there is no PostgreSQL.
pub async fn postgres_database() -> PgDatabase {
    let admin_url = admin_url_from(env::var(POSTGRES_URL_ENV).ok());
    let name = format!("ferry_test_{}", uuid::Uuid::new_v4().simple());
    let url = database_url(&admin_url, &name);

    let mut admin = connect_admin(&admin_url).await;
    // The name is ours (hex digits only), so formatting it into the statement is safe; CREATE
    // DATABASE cannot take a bind parameter.
    sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|err| panic!("creating test database {name} via {admin_url}: {err}"));
    close(admin).await;

    PgDatabase {
        name,
        url,
        admin_url,
    }
}

fn admin_url_from(value: Option<String>) -> String {
    match value {
        Some(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "PostgreSQL tests need {POSTGRES_URL_ENV}: run scripts/test, which starts a throwaway \
             PostgreSQL"
        ),
    }
}

fn database_url(admin_url: &str, name: &str) -> String {
    let mut url = Url::parse(admin_url)
        .unwrap_or_else(|err| panic!("{POSTGRES_URL_ENV}={admin_url} is not a URL: {err}"));
    url.set_path(&format!("/{name}"));
    url.into()
}

async fn connect_admin(admin_url: &str) -> PgConnection {
    PgConnection::connect(admin_url)
        .await
        .unwrap_or_else(|err| {
            panic!(
                "connecting to the test PostgreSQL at {admin_url} ({POSTGRES_URL_ENV}): {err}; \
             is the cluster that scripts/test started still running?"
            )
        })
}

async fn close(conn: PgConnection) {
    // A failed goodbye to the server changes nothing for the test.
    let _ = conn.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "PostgreSQL tests need FERRY_TEST_POSTGRES_URL: run scripts/test")]
    fn missing_url_fails_instead_of_skipping() {
        admin_url_from(None);
    }

    #[test]
    fn database_url_replaces_only_the_database() {
        assert_eq!(
            database_url(
                "postgres://postgres@127.0.0.1:55432/postgres?sslmode=disable",
                "db1"
            ),
            "postgres://postgres@127.0.0.1:55432/db1?sslmode=disable"
        );
    }

    // Runs against the real server: scripts/test always provides one, so this never skips.
    #[tokio::test]
    async fn each_call_gets_a_fresh_reachable_database() {
        let first = postgres_database().await;
        let second = postgres_database().await;
        assert_ne!(first.name(), second.name());
        assert!(first.name().starts_with("ferry_test_"));

        let mut conn = PgConnection::connect(first.url())
            .await
            .expect("connecting to the new database");
        let current: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&mut conn)
            .await
            .expect("querying current_database()");
        assert_eq!(current, first.name());
        sqlx::query("CREATE TABLE probe (id INTEGER PRIMARY KEY)")
            .execute(&mut conn)
            .await
            .expect("creating a table in the new database");
        // Left open on purpose: drop_database must cope with a connection the test forgot.
        first.drop_database().await;
        assert!(
            sqlx::query("SELECT 1").execute(&mut conn).await.is_err(),
            "the connection should have been ended by DROP DATABASE ... WITH (FORCE)"
        );

        let mut conn = PgConnection::connect(second.url())
            .await
            .expect("connecting to the second database");
        let tables: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
        )
        .fetch_one(&mut conn)
        .await
        .expect("counting tables");
        assert_eq!(tables, 0, "a new database starts empty");
        conn.close().await.expect("closing the connection");
        second.drop_database().await;
    }
}
