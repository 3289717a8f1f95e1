//! Database statistics and maintenance: what `db stats` and `db maintain` report.

use crate::{backends::Backend, support::*};

pub async fn stats_count_the_rows_of_each_table(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(
        store,
        vec![
            event("order.created", START),
            event("order.created", START + 1),
        ],
    )
    .await;
    let stats = store.db_stats().await.expect("stats");
    assert!(stats.schema_version >= 1);
    let rows = |name: &str| {
        stats
            .tables
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no table {name} in {:?}", stats.tables))
            .rows
    };
    assert_eq!(rows("events"), 2);
    assert_eq!(rows("deliveries"), 2);
    assert_eq!(rows("endpoints"), 1);
    assert!(stats.tables.iter().all(|t| t.bytes > 0 || t.rows == 0));
    assert!(stats.file_bytes > 0);
}

pub async fn maintenance_checks_vacuums_and_keeps_every_row(backend: Backend) {
    let store = &backend.store;
    with_default_endpoint(store).await;
    ingest(store, vec![event("order.created", START)]).await;
    for full in [false, true] {
        let (progress, reports) = recorded_progress();
        let report = store.maintain(full, progress).await.expect("maintain");
        assert_eq!(report.integrity, ["ok"]);
        // Phases by name; steps never past their total, which is never invented.
        let reports = reports.lock().expect("reports").clone();
        assert_eq!(
            reports.first().map(|p| p.phase),
            Some("integrity check"),
            "{reports:?}"
        );
        assert!(
            reports.iter().any(|p| p.phase.contains("VACUUM")) || !full,
            "{reports:?}"
        );
        assert!(
            reports.iter().all(|p| p.total.is_none_or(|t| p.done <= t)),
            "{reports:?}"
        );
        assert_eq!(report.vacuum, if full { "full" } else { "incremental" });
    }
    assert_eq!(store.counts().await.expect("counts").pending, 1);
}
