//! How the PostgreSQL store commits writes: group commit (callers queue their writes, a few
//! committer tasks each take all that wait and store them in one transaction), and running a
//! transaction again when it lost a deadlock or a serialization conflict.

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot};

use crate::store::StoreError;

/// Most events (or attempt results) committed in one group.
const MAX_GROUP: usize = 4096;

/// Group committers per kind of write (ingest, attempt results): transactions in flight at once.
/// One: while its commit waits for the disk the next group gathers, so groups are larger and
/// commits fewer (measured with `hookrelay-bench --database-url …`: draining 30,000 deliveries,
/// 0.08 commits per event and 8,840/s with one, 0.12 and 7,371/s with two; with three instances
/// flat out, 1.09 against 1.23 commits per event).
pub(super) const COMMITTERS: usize = 1;

/// Calls that may wait for a group committer; beyond this, callers wait (backpressure).
const WRITE_QUEUE: usize = 16_384;

/// One caller's writes waiting for the next group commit, and where its answer goes.
pub(super) struct Job<I, O> {
    input: I,
    reply: oneshot::Sender<Result<O, StoreError>>,
}

/// Queues `input` for the next group commit and waits until it is committed.
pub(super) async fn submit<I, O>(
    queue: &mpsc::Sender<Job<I, O>>,
    input: I,
) -> Result<O, StoreError> {
    let (reply, answer) = oneshot::channel();
    queue
        .send(Job { input, reply })
        .await
        .map_err(|_| StoreError::Closed)?;
    answer.await.map_err(|_| StoreError::Closed)?
}

/// Jobs waiting for the `COMMITTERS` group committers that share them.
pub(super) type Queue<I, O> = Arc<tokio::sync::Mutex<mpsc::Receiver<Job<I, O>>>>;

/// A new queue: the sending end for callers, the receiving end for the committers.
pub(super) fn queue<I, O>() -> (mpsc::Sender<Job<I, O>>, Queue<I, O>) {
    let (sender, receiver) = mpsc::channel(WRITE_QUEUE);
    (sender, Arc::new(tokio::sync::Mutex::new(receiver)))
}

/// Group commit: takes every job waiting in `queue` (up to `MAX_GROUP` of `weight`), commits
/// them together with `commit` (one answer per job), and answers each. `COMMITTERS` of these
/// share a queue: while one group commits (a few round trips to the server), the next gathers
/// and commits beside it, so a burst costs one transaction per group, not per caller.
pub(super) async fn group_commit<I, O>(
    queue: Queue<I, O>,
    weight: impl Fn(&I) -> usize,
    commit: impl AsyncFn(&[&I]) -> Result<Vec<O>, StoreError>,
) {
    let mut batch: Vec<Job<I, O>> = Vec::new();
    loop {
        {
            // Gathering holds the queue; committing does not, so the other committer gathers
            // the next group meanwhile.
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut gathered = weight(&first.input);
            batch.push(first);
            while gathered < MAX_GROUP {
                match queue.try_recv() {
                    Ok(job) => {
                        gathered += weight(&job.input);
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
        }
        let inputs: Vec<&I> = batch.iter().map(|job| &job.input).collect();
        match commit(&inputs).await {
            Ok(answers) => {
                for (job, answer) in batch.drain(..).zip(answers) {
                    let _ = job.reply.send(Ok(answer));
                }
            }
            // One caller's bad input must not fail the others: each commits on its own.
            Err(e) if batch.len() > 1 => {
                tracing::warn!(error = %e, jobs = batch.len(), "group commit failed; committing each job alone");
                for job in batch.drain(..) {
                    let answer = commit(&[&job.input]).await.and_then(|mut answers| {
                        answers
                            .pop()
                            .ok_or_else(|| StoreError::database("no answer for a job"))
                    });
                    let _ = job.reply.send(answer);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "database commit failed");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Deadlocks and serialization failures: the transaction did nothing and can simply run again.
fn is_transient(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "40P01" || code == "40001")
}

/// Runs a transaction, again if it lost a deadlock or a serialization conflict.
pub(super) async fn retrying<T, F, Fut>(mut run: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut tries = 0;
    loop {
        match run().await {
            Err(e) if is_transient(&e) && tries < 8 => {
                tries += 1;
                tracing::debug!(error = %e, tries, "transaction conflict; running it again");
                tokio::time::sleep(Duration::from_millis(2 << tries)).await;
            }
            result => return result.map_err(StoreError::from),
        }
    }
}
