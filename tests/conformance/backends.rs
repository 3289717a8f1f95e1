//! The two backends under test: a fresh SQLite file, or a fresh PostgreSQL schema.
//!
//! PostgreSQL tests run when `HOOKRELAY_TEST_POSTGRES_URL` names a server (`.ci/run` sets it).
//! Without it they are skipped with a message, unless `HOOKRELAY_REQUIRE_POSTGRES=1`, which
//! turns a missing server into a failure (CI must not pass by skipping).

use std::{sync::Arc, time::Duration};

use hookrelay::{
    config::{PostgresSettings, SqliteSync},
    domain::Redacted,
    store::{PgStore, SqliteStore, Store},
};

/// A store and what keeps its database alive; dropping it removes the database.
pub struct Backend {
    pub store: Arc<dyn Store>,
    /// Opens a second, independent store on the same database (another "instance").
    reopen: Reopen,
    _cleanup: Cleanup,
}

enum Reopen {
    Sqlite(std::path::PathBuf),
    Postgres(PostgresSettings),
}

enum Cleanup {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Schema(PostgresSettings),
}

impl Backend {
    /// Another store on the same database, as a second hookrelay instance would open it.
    pub async fn second_instance(&self) -> Arc<dyn Store> {
        match &self.reopen {
            Reopen::Sqlite(path) => Arc::new(
                SqliteStore::open(path, SqliteSync::Full)
                    .await
                    .expect("reopen sqlite"),
            ),
            Reopen::Postgres(settings) => {
                Arc::new(PgStore::open(settings).await.expect("reopen postgres"))
            }
        }
    }

    /// Rows of `inbound_messages`, read straight from the database: the store offers no way
    /// to list them, and the sweep is only visible there.
    pub async fn inbound_messages(&self) -> i64 {
        match &self.reopen {
            Reopen::Sqlite(path) => rusqlite::Connection::open(path)
                .and_then(|conn| {
                    conn.query_row("SELECT count(*) FROM inbound_messages", [], |row| {
                        row.get(0)
                    })
                })
                .expect("count sqlite"),
            Reopen::Postgres(settings) => {
                let mut conn = connect(settings).await;
                let sql = format!(
                    "SELECT count(*) FROM \"{}\".inbound_messages",
                    settings.schema
                );
                sqlx::query_scalar(&sql)
                    .fetch_one(&mut conn)
                    .await
                    .expect("count postgres")
            }
        }
    }

    /// Blocks new events from a connection of its own until [`WriteHold::release`]: SQLite's
    /// write lock, or on PostgreSQL a lock on `events` that lets reads through but not inserts.
    /// An ingest started meanwhile stays under way.
    pub async fn hold_writes(&self) -> WriteHold {
        match &self.reopen {
            Reopen::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).expect("open sqlite");
                conn.execute_batch("BEGIN IMMEDIATE")
                    .expect("take the write lock");
                WriteHold::Sqlite(conn)
            }
            Reopen::Postgres(settings) => {
                let mut conn = connect(settings).await;
                let lock = format!(
                    "BEGIN; LOCK TABLE \"{}\".events IN EXCLUSIVE MODE",
                    settings.schema
                );
                sqlx::raw_sql(&lock)
                    .execute(&mut conn)
                    .await
                    .expect("lock events");
                WriteHold::Postgres(conn)
            }
        }
    }
}

/// A connection of its own to the backend's server.
async fn connect(settings: &PostgresSettings) -> sqlx::PgConnection {
    use sqlx::Connection as _;
    sqlx::PgConnection::connect(settings.url.expose())
        .await
        .expect("connect")
}

/// A lock held by [`Backend::hold_writes`].
pub enum WriteHold {
    Sqlite(rusqlite::Connection),
    Postgres(sqlx::PgConnection),
}

impl WriteHold {
    pub async fn release(self) {
        match self {
            WriteHold::Sqlite(conn) => conn.execute_batch("ROLLBACK").expect("let go"),
            WriteHold::Postgres(mut conn) => {
                sqlx::query("ROLLBACK")
                    .execute(&mut conn)
                    .await
                    .expect("let go");
            }
        }
    }
}

pub async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hookrelay.db");
    let store = SqliteStore::open(&path, SqliteSync::Full)
        .await
        .expect("open sqlite");
    Backend {
        store: Arc::new(store),
        reopen: Reopen::Sqlite(path),
        _cleanup: Cleanup::Dir(dir),
    }
}

/// The server's URL, or `None` (test skipped) when none is configured.
pub fn postgres_url() -> Option<String> {
    match std::env::var("HOOKRELAY_TEST_POSTGRES_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("HOOKRELAY_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "HOOKRELAY_REQUIRE_POSTGRES=1 but HOOKRELAY_TEST_POSTGRES_URL is not set"
            );
            eprintln!("skipped: set HOOKRELAY_TEST_POSTGRES_URL to run the PostgreSQL tests");
            None
        }
    }
}

/// Settings for a schema of its own on the test server.
pub fn fresh_schema(url: &str) -> PostgresSettings {
    PostgresSettings {
        url: Redacted::new(url.to_owned()),
        pool_size: 8,
        statement_timeout: Duration::from_secs(30),
        schema: format!("hookrelay_test_{}", uuid::Uuid::now_v7().simple()),
    }
}

pub async fn postgres() -> Option<Backend> {
    let settings = fresh_schema(&postgres_url()?);
    let store = PgStore::open(&settings).await.expect("open postgres");
    Some(Backend {
        store: Arc::new(store),
        reopen: Reopen::Postgres(settings.clone()),
        _cleanup: Cleanup::Schema(settings),
    })
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Cleanup::Schema(settings) = self {
            let schema = settings.schema.clone();
            let settings = settings.clone();
            // Drop cannot await; a short-lived runtime on its own thread can.
            let dropped = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(PgStore::drop_schema(&settings))
            })
            .join();
            if !matches!(dropped, Ok(Ok(()))) {
                eprintln!("could not drop test schema {schema}");
            }
        }
    }
}
