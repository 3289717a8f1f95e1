//! The operator's reads on SQLite: deliveries by filter (a page, a count) and each endpoint's
//! recent attempts. The filter's SQL is written once, in `store/filter.rs`.

use rusqlite::{Connection, params, params_from_iter, types::Value};

use super::{SqliteStore, dlq::summary_row};
use crate::{
    domain::DeliveryId,
    store::{
        DeliveryFilter, DeliveryPage, DeliverySummary, EndpointActivity, MAX_PAGE, StoreError,
        filter::{Arg, Dialect, Predicates},
        rows::{self, ActivityRow, ErrorRow},
        shared::{ACTIVITY_SQL, ERRORS_SQL, SUMMARY_COLUMNS},
    },
};

impl SqliteStore {
    /// Backs `Store::search_deliveries`.
    pub(super) async fn find_deliveries(
        &self,
        filter: DeliveryFilter,
        before: Option<DeliveryId>,
        limit: usize,
    ) -> Result<DeliveryPage, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        self.read(move |conn| {
            let p = Predicates::new(Dialect::Sqlite, &filter, before.as_ref(), false);
            // Keyset paging: one row more than asked says whether an older page exists.
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id
                 {} ORDER BY d.id DESC LIMIT {}",
                p.where_clause(),
                limit + 1
            );
            let found = conn
                .prepare_cached(&sql)?
                .query_map(params_from_iter(values(p.args)), |row| {
                    summary_row(row).map(DeliverySummary::from)
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows::page(found, limit))
        })
        .await
    }

    /// Backs `Store::count_deliveries`.
    pub(super) async fn count_matching(&self, filter: DeliveryFilter) -> Result<u64, StoreError> {
        self.read(move |conn| {
            let p = Predicates::new(Dialect::Sqlite, &filter, None, false);
            let n: i64 = conn
                .prepare_cached(&format!(
                    "SELECT COUNT(*) FROM deliveries d {}",
                    p.where_clause()
                ))?
                .query_row(params_from_iter(values(p.args)), |row| row.get(0))?;
            Ok(n.unsigned_abs())
        })
        .await
    }

    /// Backs `Store::endpoint_activity`.
    pub(super) async fn activity_by_endpoint(
        &self,
        since_ms: i64,
        errors: usize,
    ) -> Result<Vec<EndpointActivity>, StoreError> {
        self.read(move |conn| {
            let counts = conn
                .prepare_cached(ACTIVITY_SQL)?
                .query_map([since_ms], |row| {
                    Ok(ActivityRow {
                        endpoint_id: row.get(0)?,
                        attempts: row.get(1)?,
                        successes: row.get(2)?,
                        failures: row.get(3)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let errors = if errors == 0 {
                Vec::new()
            } else {
                latest_errors(conn, since_ms, errors)?
            };
            Ok(rows::activity(counts, errors))
        })
        .await
    }
}

fn latest_errors(
    conn: &Connection,
    since_ms: i64,
    errors: usize,
) -> Result<Vec<ErrorRow>, StoreError> {
    let rows = conn
        .prepare_cached(ERRORS_SQL)?
        .query_map(
            params![since_ms, i64::try_from(errors).unwrap_or(i64::MAX)],
            |row| {
                Ok(ErrorRow {
                    endpoint_id: row.get(0)?,
                    delivery_id: row.get(1)?,
                    started_at: row.get(2)?,
                    status_code: row.get(3)?,
                    error_kind: row.get(4)?,
                    error_detail: row.get(5)?,
                })
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The filter's values as SQLite values.
pub(super) fn values(args: Vec<Arg>) -> Vec<Value> {
    args.into_iter()
        .map(|arg| match arg {
            Arg::Text(text) => Value::Text(text),
            Arg::Int(n) => Value::Integer(n),
        })
        .collect()
}
