//! The operator's reads on PostgreSQL: deliveries by filter (a page, a count) and each
//! endpoint's recent attempts. The filter's SQL is written once, in `store/filter.rs`.

use sqlx::{Postgres, Row, postgres::PgArguments, query::Query};

use super::{PgStore, count, dlq::summary_row};
use crate::{
    domain::DeliveryId,
    store::{
        DeliveryFilter, DeliveryPage, DeliverySummary, EndpointActivity, MAX_PAGE, StoreError,
        filter::{Arg, Dialect, Predicates},
        rows::{self, ActivityRow, ErrorRow},
        shared::{ACTIVITY_SQL, ERRORS_SQL, SUMMARY_COLUMNS},
    },
};

impl PgStore {
    /// Backs `Store::search_deliveries`.
    pub(super) async fn find_deliveries(
        &self,
        filter: DeliveryFilter,
        before: Option<DeliveryId>,
        limit: usize,
    ) -> Result<DeliveryPage, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let p = Predicates::new(Dialect::Postgres, &filter, before.as_ref(), false);
        // Keyset paging: one row more than asked says whether an older page exists.
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id
             {} ORDER BY d.id DESC LIMIT {}",
            p.where_clause(),
            limit + 1
        );
        let found = bind(sqlx::query(&sql), p.args)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| summary_row(row).map(DeliverySummary::from))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows::page(found, limit))
    }

    /// Backs `Store::count_deliveries`.
    pub(super) async fn count_matching(&self, filter: DeliveryFilter) -> Result<u64, StoreError> {
        let p = Predicates::new(Dialect::Postgres, &filter, None, false);
        let sql = format!("SELECT COUNT(*) FROM deliveries d {}", p.where_clause());
        let row = bind(sqlx::query(&sql), p.args)
            .fetch_one(&self.pool)
            .await?;
        Ok(count(&row, 0)?)
    }

    /// Backs `Store::endpoint_activity`.
    pub(super) async fn activity_by_endpoint(
        &self,
        since_ms: i64,
        errors: usize,
    ) -> Result<Vec<EndpointActivity>, StoreError> {
        let counts = sqlx::query(ACTIVITY_SQL)
            .bind(since_ms)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok(ActivityRow {
                    endpoint_id: row.try_get(0)?,
                    attempts: row.try_get(1)?,
                    successes: row.try_get(2)?,
                    failures: row.try_get(3)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let errors = if errors == 0 {
            Vec::new()
        } else {
            sqlx::query(ERRORS_SQL)
                .bind(since_ms)
                .bind(i64::try_from(errors).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|row| {
                    Ok(ErrorRow {
                        endpoint_id: row.try_get(0)?,
                        delivery_id: row.try_get(1)?,
                        started_at: row.try_get(2)?,
                        status_code: row.try_get(3)?,
                        error_kind: row.try_get(4)?,
                        error_detail: row.try_get(5)?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        };
        Ok(rows::activity(counts, errors))
    }
}

/// Binds the filter's values, in order.
pub(super) fn bind<'q>(
    mut query: Query<'q, Postgres, PgArguments>,
    args: Vec<Arg>,
) -> Query<'q, Postgres, PgArguments> {
    for arg in args {
        query = match arg {
            Arg::Text(text) => query.bind(text),
            Arg::Int(n) => query.bind(n),
        };
    }
    query
}
