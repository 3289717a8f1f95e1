//! Integration tests: the real server, a real database (a SQLite file by default, a PostgreSQL
//! schema with `HOOKRELAY_IT_BACKEND=postgres`), a real receiver on loopback.

mod architecture;
mod binary;
mod dashboard;
mod delivery;
mod dlq;
mod docs;
mod endpoints;
mod faults;
mod guard;
mod helpers;
mod ingest;
mod monitor;
mod openapi;
mod sessions;
