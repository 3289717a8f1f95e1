//! Where the data lives: an SQLite file (the default) or a PostgreSQL schema, and how long
//! it is kept.

use std::{path::PathBuf, time::Duration};

use serde::Serialize;

use super::Reader;
use crate::domain::Redacted;

/// The store's settings.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `HOOKRELAY_DATA_DIR` (default `./data`): where the SQLite file and logs live.
    pub data_dir: PathBuf,
    /// `DATABASE_URL`: overrides the database location (`sqlite://PATH`, a file path, or
    /// `postgres://…`).
    pub location: DatabaseLocation,
    /// `HOOKRELAY_SQLITE_SYNCHRONOUS` (default `full`): `full` or `normal`.
    pub sqlite_sync: SqliteSync,
    /// `HOOKRELAY_RETENTION_DAYS` (default 30): how long delivered events (and so their
    /// idempotency keys) are kept.
    pub retention_days: u32,
}

impl DatabaseSettings {
    pub(super) fn read(r: &mut Reader<'_>) -> Self {
        let data_dir = r
            .raw("HOOKRELAY_DATA_DIR")
            .map_or_else(|| PathBuf::from("./data"), |v| PathBuf::from(v.trim()));
        let location = match r.raw("DATABASE_URL") {
            None => DatabaseLocation::Sqlite(data_dir.join("hookrelay.db")),
            Some(raw) => read_location(r, raw.trim(), &data_dir),
        };
        let retention_days = r.number("HOOKRELAY_RETENTION_DAYS", 30, 1, 36_500) as u32;
        let sqlite_sync = match r
            .raw("HOOKRELAY_SQLITE_SYNCHRONOUS")
            .map(|v| v.trim().to_ascii_lowercase())
        {
            None => SqliteSync::Full,
            Some(v) if v == "full" => SqliteSync::Full,
            Some(v) if v == "normal" => SqliteSync::Normal,
            Some(v) => {
                r.error(
                    "HOOKRELAY_SQLITE_SYNCHRONOUS",
                    format!("`{v}` is not a mode"),
                    "use full or normal",
                );
                SqliteSync::Full
            }
        };
        Self {
            data_dir,
            location,
            sqlite_sync,
            retention_days,
        }
    }
}

/// `DATABASE_URL`. It may carry a password: problems name the variable, never the value.
fn read_location(r: &mut Reader<'_>, raw: &str, data_dir: &std::path::Path) -> DatabaseLocation {
    let scheme = raw
        .split_once("://")
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    if matches!(scheme.as_deref(), Some("postgres" | "postgresql")) {
        if url::Url::parse(raw).map_or(true, |u| u.host_str().is_none()) {
            r.error(
                "DATABASE_URL",
                "is not a valid PostgreSQL URL",
                "use postgres://USER:PASSWORD@HOST:5432/DATABASE (add ?sslmode=require for TLS)",
            );
        }
        // Four at least: the work listener keeps one, and the two group committers and the
        // worker's claims need their own.
        let pool_size = r.number("HOOKRELAY_DB_POOL_SIZE", 10, 4, 1000) as u32;
        let statement_timeout =
            r.seconds("HOOKRELAY_DB_STATEMENT_TIMEOUT_SECONDS", 30.0, 0.1, 3600.0);
        let schema = r
            .raw("HOOKRELAY_DB_SCHEMA")
            .map_or_else(|| "public".to_owned(), |s| s.trim().to_owned());
        let valid_schema = schema.len() <= 63
            && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_schema {
            r.error(
                "HOOKRELAY_DB_SCHEMA",
                format!("`{schema}` is not a plain schema name"),
                "use lowercase letters, digits and underscores, starting with a letter",
            );
        }
        DatabaseLocation::Postgres(PostgresSettings {
            url: Redacted::new(raw.to_owned()),
            pool_size,
            statement_timeout,
            schema,
        })
    } else if scheme.is_none() && looks_like_a_connection_string(raw) {
        // Taken as a file path, it would be printed in every "no database at …" message.
        r.error(
            "DATABASE_URL",
            "looks like a PostgreSQL connection string, not a URL (it names a user, host or password)",
            "use postgres://USER:PASSWORD@HOST:5432/DATABASE; for a file path holding `@`, write sqlite://PATH",
        );
        DatabaseLocation::Sqlite(data_dir.join("hookrelay.db"))
    } else if scheme.as_deref().is_some_and(|s| s != "sqlite") {
        r.error(
            "DATABASE_URL",
            "has a scheme hookrelay does not know",
            "use postgres://… for PostgreSQL or sqlite://PATH (or a file path) for SQLite",
        );
        DatabaseLocation::Sqlite(data_dir.join("hookrelay.db"))
    } else {
        let path = raw
            .strip_prefix("sqlite://")
            .or_else(|| raw.strip_prefix("sqlite:"))
            .unwrap_or(raw);
        if path.is_empty() || path.contains(":memory:") {
            r.error(
                "DATABASE_URL",
                "must name a database file (an in-memory database would lose acknowledged events)",
                "use sqlite://PATH/TO/hookrelay.db, or unset it",
            );
        }
        DatabaseLocation::Sqlite(PathBuf::from(path))
    }
}

/// `user:password@host/db`, `postgres:/…` or libpq's `host=… password=…`: a connection
/// string that is not a URL, which may hold a password. A file path with `@` in it must be
/// written `sqlite://PATH`.
fn looks_like_a_connection_string(raw: &str) -> bool {
    let lower = raw.trim().to_ascii_lowercase();
    !lower.starts_with("sqlite:")
        && (lower.contains('@')
            || lower.starts_with("postgres:")
            || lower.starts_with("postgresql:")
            || lower.contains("password=")
            || lower.contains("host="))
}

/// Where the data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    /// An SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, which several instances can share.
    Postgres(PostgresSettings),
}

/// How to reach PostgreSQL (`DATABASE_URL=postgres://…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresSettings {
    /// The connection URL, libpq style: TLS with `?sslmode=require` (or `verify-ca`,
    /// `verify-full`, with `sslrootcert=PATH`). It may hold a password, so it is never printed.
    pub url: Redacted<String>,
    /// `HOOKRELAY_DB_POOL_SIZE` (default 10): connections per instance.
    pub pool_size: u32,
    /// `HOOKRELAY_DB_STATEMENT_TIMEOUT_SECONDS` (default 30): the server cancels longer statements.
    pub statement_timeout: Duration,
    /// `HOOKRELAY_DB_SCHEMA` (default `public`): the schema holding hookrelay's tables; created
    /// if missing, so several deployments (or tests) can share one database.
    pub schema: String,
}

/// How hard SQLite works to make a commit survive power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    /// fsync on every commit: an acknowledged event survives power loss (default).
    #[default]
    Full,
    /// fsync at checkpoints only: survives a process crash, may lose the last commits on power loss.
    Normal,
}
