//! Endpoint gates on PostgreSQL: several instances claim as one ([`crate::domain::grant`]).
//!
//! A claim is one short transaction per batch (never per delivery): lock the wanted endpoints'
//! gate rows in key order, read them and the deliveries out with every instance in a snapshot
//! taken after the locks (so every claim that held them before has committed and is counted),
//! grant, claim, and write back the gates that changed. Attempt results write what one instance
//! saw for all (a pause, a circuit opening or closing) in their own statement
//! (`queue.rs`, `gated`).

use std::collections::HashMap;

use sqlx::{Row, postgres::PgRow};

use super::{PgStore, commit::retrying, queue::claim_rows};
use crate::{
    domain::{CircuitState, EndpointId, Gate, Grant, grant},
    store::{ClaimedDelivery, GatedWant, LeaseToken, StoreError},
};

const GATE_COLUMNS: &str = "endpoint_id, tat_ms, paused_until_ms, circuit, open_until_ms, \
                            probe_holder, probe_until_ms, changed_at_ms";

fn gate_row(row: &PgRow) -> Result<(String, Gate), sqlx::Error> {
    let circuit: String = row.try_get("circuit")?;
    Ok((
        row.try_get("endpoint_id")?,
        Gate {
            tat_ms: row.try_get("tat_ms")?,
            paused_until_ms: row.try_get("paused_until_ms")?,
            circuit: circuit.parse().unwrap_or(CircuitState::Closed),
            open_until_ms: row.try_get("open_until_ms")?,
            probe_holder: row.try_get("probe_holder")?,
            probe_until_ms: row.try_get("probe_until_ms")?,
            changed_at_ms: row.try_get("changed_at_ms")?,
        },
    ))
}

impl PgStore {
    /// Backs `Store::claim_gated`.
    pub(super) async fn claim_through_gates(
        &self,
        now_ms: i64,
        lease_ms: i64,
        claimant: String,
        wants: Vec<GatedWant>,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let wants: Vec<GatedWant> = wants.into_iter().filter(|w| w.ask.slots > 0).collect();
        if wants.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids: Vec<String> = wants
            .iter()
            .map(|w| w.endpoint.as_str().to_owned())
            .collect();
        ids.sort();
        ids.dedup();
        retrying(|| async {
            let mut tx = self.pool.begin().await?;
            // Key order: concurrent claimants lock alike and never deadlock.
            sqlx::query(
                "SELECT 1 FROM endpoint_gates WHERE endpoint_id = ANY($1) ORDER BY endpoint_id FOR UPDATE",
            )
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
            let rows = sqlx::query(&format!(
                "SELECT {GATE_COLUMNS},
                     (SELECT COUNT(*) FROM deliveries d
                      WHERE d.status = 'pending' AND d.endpoint_id = g.endpoint_id
                          AND d.lease_token IS NOT NULL AND d.next_attempt_at > $2) AS in_flight
                 FROM endpoint_gates g WHERE g.endpoint_id = ANY($1)"
            ))
            .bind(&ids)
            .bind(now_ms)
            .fetch_all(&mut *tx)
            .await?;
            let mut gates: HashMap<String, (Gate, usize)> = HashMap::with_capacity(rows.len());
            for row in &rows {
                let (id, gate) = gate_row(row)?;
                let in_flight: i64 = row.try_get("in_flight")?;
                gates.insert(id, (gate, usize::try_from(in_flight).unwrap_or(0)));
            }

            let token = LeaseToken(rand::random::<i64>());
            let mut grants: Vec<(&GatedWant, Grant)> = Vec::with_capacity(wants.len());
            for want in &wants {
                // An endpoint without a gate row was removed a moment ago: nothing to claim.
                if let Some((gate, in_flight)) = gates.get(want.endpoint.as_str()) {
                    grants.push((want, grant(gate, &want.limits, want.ask, *in_flight, now_ms)));
                }
            }
            let flowing: Vec<(EndpointId, usize)> = grants
                .iter()
                .filter(|(want, _)| !want.ask.probe)
                .map(|(want, grant)| (want.endpoint.clone(), grant.slots))
                .collect();
            let mut claimed =
                claim_rows(&mut tx, token, now_ms, lease_ms, &claimant, &flowing, false).await?;
            for (want, grant) in grants.iter().filter(|(want, _)| want.ask.probe) {
                // Half the probes re-try deliveries that failed before (see `Store::claim_gated`).
                let endpoint = [(want.endpoint.clone(), grant.slots.div_ceil(2))];
                let mut probes =
                    claim_rows(&mut tx, token, now_ms, lease_ms, &claimant, &endpoint, true).await?;
                let rest = [(want.endpoint.clone(), grant.slots - probes.len())];
                probes.extend(
                    claim_rows(&mut tx, token, now_ms, lease_ms, &claimant, &rest, false).await?,
                );
                claimed.extend(probes);
            }

            // The gates that changed: the rate's schedule moved, a probe round started.
            let mut changed: Vec<(String, Gate)> = Vec::new();
            for (want, grant) in &grants {
                let Some((gate, _)) = gates.get(want.endpoint.as_str()) else {
                    continue;
                };
                let taken = claimed.iter().filter(|c| c.endpoint_id == want.endpoint).count();
                let next = gate.after_claim(&want.limits, *grant, taken, &claimant, now_ms, lease_ms);
                if next != *gate {
                    changed.push((want.endpoint.as_str().to_owned(), next));
                }
            }
            if !changed.is_empty() {
                let column = |f: fn(&Gate) -> i64| changed.iter().map(|(_, g)| f(g)).collect::<Vec<i64>>();
                sqlx::query(
                    "UPDATE endpoint_gates AS g SET tat_ms = c.tat_ms, circuit = c.circuit,
                         probe_holder = c.probe_holder, probe_until_ms = c.probe_until_ms,
                         changed_at_ms = c.changed_at_ms
                     FROM UNNEST($1::text[], $2::float8[], $3::text[], $4::text[], $5::int8[], $6::int8[])
                         AS c(endpoint_id, tat_ms, circuit, probe_holder, probe_until_ms, changed_at_ms)
                     WHERE g.endpoint_id = c.endpoint_id",
                )
                .bind(changed.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>())
                .bind(changed.iter().map(|(_, g)| g.tat_ms).collect::<Vec<f64>>())
                .bind(changed.iter().map(|(_, g)| g.circuit.as_str()).collect::<Vec<_>>())
                .bind(changed.iter().map(|(_, g)| g.probe_holder.clone()).collect::<Vec<_>>())
                .bind(column(|g| g.probe_until_ms))
                .bind(column(|g| g.changed_at_ms))
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(claimed)
        })
        .await
    }

    /// Backs `Store::gates`.
    pub(super) async fn read_gates(&self) -> Result<Vec<(EndpointId, Gate)>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {GATE_COLUMNS} FROM endpoint_gates"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let (id, gate) = gate_row(row)?;
                Ok((EndpointId::from_trusted(id), gate))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}
