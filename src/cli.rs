//! The command line: parses the arguments, loads the config, runs the
//! command (`crate::commands`), prints its report and returns its exit
//! code. The one place that prints.
//!
//! Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{commands, config};

#[derive(Debug, Parser)]
#[command(name = "pgfanout", version, about = "PostgreSQL change-data-capture: one replication slot, many sinks")]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream changes until SIGTERM/SIGINT.
    Run {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a configuration file offline.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Check the live system: server settings, privileges, publication, replica identity, slot, sinks.
    Doctor {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Print slot lag, confirmed LSN and per-sink positions.
    Status {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Compare every store with the source rows (missing, different and
    /// extra entries); exit 0 when equal, 1 when divergent.
    Verify {
        #[arg(short, long)]
        config: PathBuf,
        /// Only this pipeline (repeat or comma-separate for several).
        #[arg(long, value_delimiter = ',')]
        pipeline: Vec<String>,
        /// Check this fraction of the rows, e.g. 0.05 (extras are then not checked).
        #[arg(long)]
        sample: Option<f64>,
        /// Write divergent rows again through the sink and remove extra entries.
        #[arg(long)]
        repair: bool,
        /// Also write the full report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Read at most this many source rows per second (default: no limit).
        #[arg(long)]
        max_rows_per_second: Option<u64>,
        /// Source rows per keyset chunk.
        #[arg(long, default_value_t = 1000)]
        chunk_rows: usize,
        /// How long a recheck waits for the stream to pass the verify's snapshot.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        settle: std::time::Duration,
        /// Divergent entries printed per pipeline.
        #[arg(long, default_value_t = 20)]
        show: usize,
    },
    /// Re-copy a table into the sinks while streaming (or list, pause,
    /// resume, cancel backfills). The running daemon picks requests up
    /// from `pgfanout.signals` within a second.
    Backfill {
        #[arg(short, long)]
        config: PathBuf,
        /// The table to backfill (schema.table).
        #[arg(long, required_unless_present_any = ["list", "pause", "resume", "cancel"])]
        table: Option<String>,
        /// Only rows matching this SQL condition.
        #[arg(long = "where")]
        filter: Option<String>,
        /// Rows per chunk (default 1000).
        #[arg(long)]
        chunk_size: Option<i64>,
        /// Throttle: rows per second at most.
        #[arg(long)]
        max_rows_per_second: Option<i64>,
        /// Wait until the backfill is done (exit 1 if it fails or is cancelled).
        #[arg(long)]
        wait: bool,
        /// Wait, showing progress: a bar (rows, rows/s, ETA) on a terminal,
        /// a line every 5 s otherwise.
        #[arg(long)]
        follow: bool,
        /// List the backfills of this config's slot.
        #[arg(long, conflicts_with_all = ["table", "pause", "resume", "cancel"])]
        list: bool,
        #[arg(long, value_name = "ID", conflicts_with_all = ["table", "resume", "cancel"])]
        pause: Option<i64>,
        #[arg(long, value_name = "ID", conflicts_with_all = ["table", "pause", "cancel"])]
        resume: Option<i64>,
        #[arg(long, value_name = "ID", conflicts_with_all = ["table", "pause", "resume"])]
        cancel: Option<i64>,
    },
    /// Wait until every change committed at or before an LSN is durable in
    /// a sink (every sink by default): read-your-writes from the shell.
    Wait {
        #[arg(short, long)]
        config: PathBuf,
        /// The position, e.g. 0/16B3748: pg_current_wal_insert_lsn() taken after the commit
        /// (at or after the commit record even under synchronous_commit=off).
        #[arg(long)]
        lsn: String,
        /// Only this sink.
        #[arg(long)]
        sink: Option<String>,
        /// Give up after this long (exit 1).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// List dead letters, or send them again through the current config.
    #[command(name = "dead-letters", subcommand)]
    DeadLetters(DeadLettersCommand),
}

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// Print the dead letters (oldest position first).
    List {
        #[command(flatten)]
        which: LetterArgs,
        /// One JSON object per line instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Send them again through the pipelines and sinks as configured now;
    /// remove the ones delivered (or filtered out), keep the ones refused
    /// again with their new error. Exit 1 when some remain.
    Replay {
        #[command(flatten)]
        which: LetterArgs,
        /// Route them and say what would be sent; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub struct LetterArgs {
    #[arg(short, long)]
    pub config: PathBuf,
    /// Only the letters of this sink.
    #[arg(long)]
    pub sink: Option<String>,
    /// Only the letters of this pipeline.
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Only letters written since this time: RFC 3339 (2026-12-07T10:00:00Z) or an age (2h, 30m).
    #[arg(long)]
    pub since: Option<String>,
}

impl DeadLettersCommand {
    fn which(&self) -> &LetterArgs {
        match self {
            DeadLettersCommand::List { which, .. } | DeadLettersCommand::Replay { which, .. } => which,
        }
    }
}

/// Parses arguments, runs the command, returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    init_logging(cli.log_format);
    let path = match &cli.command {
        Command::Run { config }
        | Command::Check { config }
        | Command::Doctor { config }
        | Command::Status { config }
        | Command::Verify { config, .. }
        | Command::Wait { config, .. }
        | Command::Backfill { config, .. } => config.clone(),
        Command::DeadLetters(c) => c.which().config.clone(),
    };
    let cfg = match config::load(&path) {
        Ok(cfg) => cfg,
        Err(errors) => {
            eprintln!("{errors}");
            return 2;
        }
    };
    if let Command::Check { .. } = cli.command {
        println!("{}: ok", path.display());
        return 0;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return 1;
        }
    };
    let report = runtime.block_on(async move {
        match cli.command {
            Command::Run { .. } => commands::run::run(cfg, &path).await,
            Command::Doctor { .. } => commands::doctor::doctor(&cfg).await,
            Command::Status { .. } => commands::status::status(&cfg).await,
            Command::Verify { pipeline, sample, repair, json, max_rows_per_second, chunk_rows, settle, show, .. } => {
                let opts = crate::verify::VerifyOptions {
                    pipelines: pipeline,
                    sample,
                    repair,
                    json,
                    max_rows_per_second,
                    chunk_rows: chunk_rows.max(1),
                    settle,
                    show,
                };
                commands::verify::verify(&cfg, &opts).await
            }
            Command::Backfill { table, filter, chunk_size, max_rows_per_second, wait, follow, list, pause, resume, cancel, .. } => {
                let request = commands::backfill::BackfillRequest {
                    table,
                    filter,
                    chunk_size,
                    max_rows_per_second,
                    wait: wait || follow,
                    follow,
                    list,
                    pause,
                    resume,
                    cancel,
                };
                commands::backfill::backfill(&cfg, request).await
            }
            Command::Wait { lsn, sink, timeout, .. } => commands::wait::wait(&cfg, &lsn, sink.as_deref(), timeout).await,
            Command::DeadLetters(c) => {
                let dry_run = matches!(c, DeadLettersCommand::Replay { dry_run: true, .. });
                let json = matches!(c, DeadLettersCommand::List { json: true, .. });
                let replay = matches!(c, DeadLettersCommand::Replay { .. });
                let w = c.which();
                let request = commands::dead_letters::Request {
                    sink: w.sink.clone(),
                    pipeline: w.pipeline.clone(),
                    since: w.since.clone(),
                    replay,
                    dry_run,
                    json,
                };
                commands::dead_letters::dead_letters(&cfg, request).await
            }
            Command::Check { .. } => commands::Report::default(),
        }
    });
    print!("{}", report.out);
    eprint!("{}", report.err);
    report.exit as i32
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGFANOUT_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: ANSI codes in a log file or a pipe are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Human logs on a terminal: progress bars (the initial snapshot) drawn
    // below them, the log lines printed above (tracing-indicatif).
    if format == LogFormat::Human && crate::progress::bars_wanted() {
        use tracing_subscriber::layer::{Layer, SubscriberExt};
        use tracing_subscriber::util::SubscriberInitExt;
        let bars = tracing_indicatif::IndicatifLayer::new().with_span_field_formatter(
            tracing_indicatif::filter::hide_indicatif_span_fields(tracing_subscriber::fmt::format::DefaultFields::new()),
        );
        let lines = tracing_subscriber::fmt::layer().with_writer(bars.get_stderr_writer()).with_ansi(ansi);
        tracing_subscriber::registry()
            .with(filter)
            .with(lines)
            .with(bars.with_filter(tracing_indicatif::filter::IndicatifFilter::new(false)))
            .init();
        crate::progress::BARS_IN_LOGS.store(true, std::sync::atomic::Ordering::Release);
        return;
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
