//! pgfanout: a PostgreSQL change-data-capture daemon.
//!
//! It reads a logical replication slot (pgoutput), passes every change
//! through the pipelines declared in YAML and writes it to the configured
//! sinks, confirming to PostgreSQL only what every sink has made durable.

pub mod activity;
pub mod backfill;
pub mod cli;
pub mod commands;
pub mod config;
pub mod connectors;
pub mod console;
pub mod dead_letter;
pub mod expr;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod progress;
pub mod runtime;
pub mod verify;
