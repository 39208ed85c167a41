//! The commands of the command line, one module each: `run`, `doctor`,
//! `status`, `verify`, `wait`, `backfill`, `dead-letters` (`check` is loading the config,
//! in `crate::cli`). Each returns a [`Report`]: what to print and how the
//! process ends. Only `crate::cli` prints it and exits; the commands, like
//! the rest of the library, print nothing, so they can be called and
//! checked without a terminal.
//!
//! Exit codes: 0 ok, 1 a failure at run time (or a divergent verify, a
//! failed check), 2 bad configuration or usage.

pub mod backfill;
pub mod dead_letters;
pub mod doctor;
pub mod run;
pub mod status;
pub mod verify;
pub mod wait;

use std::fmt::{self, Write as _};

use crate::config::Config;

/// How a command ends: the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Exit {
    #[default]
    Ok = 0,
    /// A failure at run time, a divergent store, a failed check.
    Failed = 1,
    /// Bad configuration, options or usage.
    Usage = 2,
}

/// What a command says (stdout, stderr) and how it ends.
#[derive(Debug, Default)]
pub struct Report {
    pub out: String,
    pub err: String,
    pub exit: Exit,
}

impl Report {
    /// A line for stdout.
    pub fn say(&mut self, line: impl fmt::Display) {
        let _ = writeln!(self.out, "{line}");
    }

    /// A line for stderr.
    pub fn complain(&mut self, line: impl fmt::Display) {
        let _ = writeln!(self.err, "{line}");
    }

    /// Ends with `exit`.
    pub fn ends(mut self, exit: Exit) -> Report {
        self.exit = exit;
        self
    }

    /// A report of one error line and its exit.
    pub fn error(exit: Exit, line: impl fmt::Display) -> Report {
        let mut r = Report::default();
        r.complain(line);
        r.ends(exit)
    }
}

/// With `source.kafka` (an applier's config): the consumer group's name
/// with its state, members and every partition's lag
/// ([`GroupWatch::describe`](pgfanout_kafka::source::GroupWatch::describe)),
/// for `status` and `doctor`. `None` without `source.kafka`.
#[cfg(feature = "kafka")]
pub(crate) async fn describe_group(cfg: &Config) -> Option<Result<(String, pgfanout_kafka::source::GroupView), String>> {
    let (kafka, group) = (cfg.source.kafka.clone()?, cfg.source.kafka_group()?);
    let described = tokio::task::spawn_blocking(move || {
        let watch = pgfanout_kafka::source::GroupWatch::new(&kafka, &group).map_err(|e| e.to_string())?;
        watch.describe(std::time::Duration::from_secs(10)).map_err(|e| e.to_string()).map(|v| (group, v))
    })
    .await;
    Some(described.map_err(|e| e.to_string()).and_then(|x| x))
}

/// A SQL connection to the server holding the slot: the standby when
/// decoding on one (`source.postgres.primary_url`), else the source.
pub(crate) async fn connect_slot_server(cfg: &Config) -> Result<tokio_postgres::Client, Report> {
    connect(cfg, false).await
}

/// A SQL connection to the source (the primary, where pgfanout writes), or
/// the report that ends the command: a bad URL is usage (2), an unreachable
/// server a failure (1).
pub(crate) async fn connect_source(cfg: &Config) -> Result<tokio_postgres::Client, Report> {
    connect(cfg, true).await
}

async fn connect(cfg: &Config, writer: bool) -> Result<tokio_postgres::Client, Report> {
    let opts = cfg.source.postgres.connect_options().map_err(|e| Report::error(Exit::Usage, format_args!("source.postgres.url: {e}")))?;
    let server = if writer { opts.writer() } else { &opts };
    pgfanout_postgres::conn::connect_sql(server)
        .await
        .map_err(|e| Report::error(Exit::Failed, format_args!("cannot connect to {}: {e}", server.redacted())))
}
