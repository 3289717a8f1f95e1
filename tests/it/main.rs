//! Integration tests: the real server, a real SQLite file, a real receiver on loopback.

mod binary;
mod delivery;
mod dlq;
mod endpoints;
mod faults;
mod guard;
mod helpers;
mod ingest;
mod monitor;
mod sessions;
