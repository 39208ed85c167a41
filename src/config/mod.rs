//! Configuration: a YAML file, `PGFANOUT__SECTION__KEY` environment
//! overrides and `${VAR}` interpolation, deserialized into typed structs that
//! reject unknown fields, then validated before any I/O (docs/design.md).
//!
//! Loading never stops at the first problem: each section, sink and pipeline
//! is deserialized on its own and then validated, so one run of
//! `pgfanout check` lists every error, each naming the file, the dotted path
//! (`pipelines[2].redis.key`) and what is expected. Secrets (URL passwords,
//! values of `${…PASSWORD…}`-style variables) are scrubbed from all of them.

//!
//! The parts, in the order a file goes through them: [`loader`] reads and
//! interpolates, [`sections`] and [`pipeline`] are the typed shapes,
//! [`sinks`] has each sink's connector parse its settings and mappings,
//! [`validate`] checks what spans sections. [`redact`] scrubs secrets.

mod interpolate;
mod loader;
pub mod pipeline;
pub mod redact;
mod sections;
pub mod sinks;
mod validate;

pub use loader::{load, load_with_env};
pub use pgfanout_sdk::settings::ByteSize;
pub use pipeline::{MaskConfig, OneOrMany, PipelineConfig, TablePattern, TransformConfig};
pub use sections::*;
pub use validate::validate;

/// The shared settings types (durations, sizes), as the config uses them.
pub use pgfanout_sdk::settings as units;
