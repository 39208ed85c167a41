//! pgfanout daemon.
pub mod config;
pub mod pipeline;
