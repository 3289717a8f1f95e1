//! Endpoint gates on PostgreSQL: several instances claim as one ([`crate::domain::grant`]).
//!
//! Most claims cost what they did alone: one statement, which skips endpoints whose gate holds
//! everyone (a receiver's pause, a circuit not closed). Only an endpoint with a rate limit, or an
//! open circuit's probe round, needs the gate's shared state: one short transaction per claim
//! batch (never per delivery) locks those gate rows in key order (the locking read returns their
//! latest committed state), grants, claims, and writes back the gates that changed. Attempt
//! results write what one instance saw for all (a pause, a circuit opening or closing) in their
//! own statement (`queue.rs`, `gated`).

use std::collections::HashMap;

use sqlx::{Row, postgres::PgRow};

use super::{
    PgStore,
    commit::retrying,
    queue::{Claim, claim_rows},
};
use crate::{
    domain::{CircuitState, EndpointId, Gate, GateLimits, grant},
    store::{GatedClaim, GatedWant, LeaseToken, StoreError},
};

/// A gate that holds an endpoint with no time of its own (a cooled-down circuit waiting for a
/// probe round) is asked again after this.
const HELD_AT_LEAST_MS: i64 = 250;

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
    ) -> Result<GatedClaim, StoreError> {
        let wants: Vec<GatedWant> = wants.into_iter().filter(|w| w.ask.slots > 0).collect();
        let (shared, free): (Vec<GatedWant>, Vec<GatedWant>) = wants
            .into_iter()
            .partition(|w| w.limits.is_limited() || w.ask.probe);
        let claim = |retried_only| Claim {
            now_ms,
            lease_ms,
            claimant: &claimant,
            retried_only,
            gated: true,
        };
        let mut result = GatedClaim::default();
        // The locked path first: if it fails, nothing the free path took is left leased.
        if !shared.is_empty() {
            let mut ids: Vec<String> = shared
                .iter()
                .map(|w| w.endpoint.as_str().to_owned())
                .collect();
            ids.sort();
            ids.dedup();
            result = retrying(|| async {
                let mut tx = self.pool.begin().await?;
                // An endpoint whose gate row is missing (restored without triggers, say)
                // gets one now rather than never being claimed.
                sqlx::query(
                    "INSERT INTO endpoint_gates (endpoint_id)
                     SELECT e.id FROM endpoints e WHERE e.id = ANY($1) ON CONFLICT DO NOTHING",
                )
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
                // Byte order, as the result statement locks them: concurrent claimants and
                // results never deadlock. A locking read returns each row as last committed.
                let rows = sqlx::query(&format!(
                    "SELECT {GATE_COLUMNS} FROM endpoint_gates WHERE endpoint_id = ANY($1)
                     ORDER BY endpoint_id COLLATE \"C\" FOR UPDATE"
                ))
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
                let gates: HashMap<String, Gate> =
                    rows.iter().map(gate_row).collect::<Result<_, _>>()?;
                let token = LeaseToken(rand::random::<i64>());
                let mut done = GatedClaim::default();
                let mut changed: Vec<(String, Gate)> = Vec::new();
                for want in &shared {
                    let Some(gate) = gates.get(want.endpoint.as_str()) else {
                        continue;
                    };
                    let grant = grant(gate, &want.limits, want.ask, now_ms);
                    if grant.slots == 0 {
                        done.held
                            .push((want.endpoint.clone(), gate.held_until(&want.limits, now_ms)));
                        continue;
                    }
                    let mut got = if want.ask.probe {
                        // Half the probes re-try deliveries that failed before.
                        let first = [(want.endpoint.clone(), grant.slots.div_ceil(2))];
                        claim_rows(&mut tx, token, claim_ungated(claim(true)), &first).await?
                    } else {
                        Vec::new()
                    };
                    let rest = [(want.endpoint.clone(), grant.slots - got.len())];
                    got.extend(
                        claim_rows(&mut tx, token, claim_ungated(claim(false)), &rest).await?,
                    );
                    let next = gate.after_claim(
                        &want.limits,
                        grant,
                        got.len(),
                        &claimant,
                        now_ms,
                        lease_ms,
                    );
                    if next != *gate {
                        changed.push((want.endpoint.as_str().to_owned(), next));
                    }
                    done.deliveries.extend(got);
                }
                write_gates(&mut tx, &changed).await?;
                tx.commit().await?;
                Ok(done)
            })
            .await?;
        }
        if !free.is_empty() {
            let wanted: Vec<(EndpointId, usize)> = free
                .iter()
                .map(|w| (w.endpoint.clone(), w.ask.slots))
                .collect();
            let token = LeaseToken(rand::random::<i64>());
            let claimed = retrying(|| async {
                let mut conn = self.pool.acquire().await?;
                claim_rows(&mut conn, token, claim(false), &wanted).await
            })
            .await?;
            // An endpoint that got nothing may be held by its gate (a pause, a circuit another
            // instance opened): say until when, so the claimant does not ask again in a loop.
            let empty: Vec<String> = free
                .iter()
                .filter(|w| !claimed.iter().any(|c| c.endpoint_id == w.endpoint))
                .map(|w| w.endpoint.as_str().to_owned())
                .collect();
            if !empty.is_empty() {
                let rows = sqlx::query(&format!(
                    "SELECT {GATE_COLUMNS} FROM endpoint_gates
                     WHERE endpoint_id = ANY($1) AND (paused_until_ms > $2 OR circuit <> 'closed')"
                ))
                .bind(&empty)
                .bind(now_ms)
                .fetch_all(&self.pool)
                .await?;
                for row in &rows {
                    let (id, gate) = gate_row(row)?;
                    let until = gate
                        .held_until(&GateLimits::new(None), now_ms)
                        .max(now_ms + HELD_AT_LEAST_MS);
                    result.held.push((EndpointId::from_trusted(id), until));
                }
            }
            result.deliveries.extend(claimed);
        }
        Ok(result)
    }

    /// Backs `Store::live_workers`.
    pub(super) async fn count_live_workers(
        &self,
        since_ms: i64,
        instance: String,
    ) -> Result<(usize, usize), StoreError> {
        let (others, before): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*) FILTER (WHERE instance <> $2),
                    COUNT(*) FILTER (WHERE instance COLLATE \"C\" < $2 COLLATE \"C\")
             FROM heartbeats WHERE beat_at >= $1",
        )
        .bind(since_ms)
        .bind(&instance)
        .fetch_one(&self.pool)
        .await?;
        let count = usize::try_from(others).unwrap_or(0) + 1;
        Ok((count, usize::try_from(before).unwrap_or(0)))
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

/// The gate has just been read under its lock: the claim needs no second look at it.
fn claim_ungated(claim: Claim<'_>) -> Claim<'_> {
    Claim {
        gated: false,
        ..claim
    }
}

/// Writes back the gates a claim changed (its rate schedule, a probe round it started).
async fn write_gates(
    tx: &mut sqlx::PgConnection,
    changed: &[(String, Gate)],
) -> Result<(), sqlx::Error> {
    if changed.is_empty() {
        return Ok(());
    }
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
    .bind(
        changed
            .iter()
            .map(|(_, g)| g.circuit.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        changed
            .iter()
            .map(|(_, g)| g.probe_holder.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        changed
            .iter()
            .map(|(_, g)| g.probe_until_ms)
            .collect::<Vec<i64>>(),
    )
    .bind(
        changed
            .iter()
            .map(|(_, g)| g.changed_at_ms)
            .collect::<Vec<i64>>(),
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}
