//! Shared helpers for the end-to-end tests, written once for every test
//! binary (each `tests/*.rs` says `mod common;` and `use common::*;`).
//!
//! One file per idea: a PostgreSQL cluster and its slot positions
//! (`cluster`), the daemon's configs (`config`) and HTTP listener (`http`), the file sink's output
//! read back as a replaying consumer would (`output`), random workloads
//! (`workload`), `pgfanout verify` runs (`verify`), and readers of what the
//! stores hold (`search`, `kafka`, `neo4j`, `scylla`, `mongo`).
#![allow(dead_code, unused_imports)]

pub mod cluster;
pub mod config;
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mongodb")]
pub mod mongo;
#[cfg(feature = "neo4j")]
pub mod neo4j;
pub mod output;
#[cfg(feature = "scylla")]
pub mod scylla;
pub mod search;
pub mod verify;
pub mod workload;

pub use cluster::*;
pub use config::*;
pub use http::*;
#[cfg(feature = "mongodb")]
pub use mongo::*;
pub use output::*;
pub use search::*;
pub use testkit::{Daemon, PgCluster};
pub use verify::*;
pub use workload::*;
