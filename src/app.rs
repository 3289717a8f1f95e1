//! `serve`: the HTTP API, the delivery worker and the monitor, side by side, until shutdown.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{api, relay::Relay};

/// Runs the API on `listener` (none for the worker role) and, unless the configured role is
/// `api`, the delivery worker, until `shutdown` is cancelled. On shutdown the API stops
/// accepting, in-flight deliveries get the grace period to finish, and whatever is left is
/// released back to the queue. The caller owns the listener, so tests bind port 0.
pub async fn serve(
    relay: Relay,
    listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let grace = relay.config().server.shutdown_grace;
    let role = relay.config().server.role;
    crate::metrics::install();
    let worker = role
        .delivers()
        .then(|| tokio::spawn(relay.clone().run_worker(shutdown.clone())));
    let monitor = relay.monitor().map_err(std::io::Error::other)?;
    let relay_for_sign_off = relay.clone();
    let alive = Arc::clone(relay.worker());
    // An API-only instance has no worker to report alive: its heartbeat would hide a stalled
    // queue from `hookrelay health`.
    let monitor = tokio::spawn(monitor.run(
        move || role.delivers() && alive.is_alive(),
        shutdown.clone(),
    ));
    let served = match listener {
        Some(listener) => {
            let served = api::serve(relay, listener, shutdown.clone(), grace).await;
            info!("HTTP API stopped");
            served
        }
        None => {
            shutdown.cancelled().await;
            Ok(())
        }
    };
    // If the API failed on its own, the worker must stop too.
    shutdown.cancel();
    if let Some(worker) = worker {
        if let Err(e) = worker.await {
            tracing::error!(error = %e, "delivery worker ended abnormally");
        }
        info!("delivery worker stopped");
    }
    if let Err(e) = monitor.await {
        tracing::error!(error = %e, "monitor ended abnormally");
    }
    // Last, once the worker has finished: a clean stop is seen as one at once, not after the
    // heartbeat goes stale.
    if role.delivers()
        && let Err(e) = relay_for_sign_off.sign_off().await
    {
        tracing::warn!(error = %e, "could not clear this instance's heartbeat; it goes stale on its own");
    }
    served
}
