//! Dead letters: records that cannot be delivered, with their error.
//!
//! A record lands here when a sink rejects it permanently or when its
//! pipeline's filter or a transform fails. The letter is written durably
//! (appended and `fsync`ed to a file, or committed to
//! `pgfanout.dead_letters`) before the record counts as done, so nothing
//! vanishes: either the record is in its sink or it is here, with the
//! reason. `pgfanout dead-letters list | replay` reads them back
//! ([`store`], [`replay`]); [`record`] is their stored form.

pub mod gone;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod record;
pub mod replay;
pub mod store;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pgfanout_file::LinesFile;
use pgfanout_postgres::conn::{connect_sql, PgConnectOptions};
use tracing::error;

use pgfanout_sdk::settings::Backoff;

pub use record::{DeadLetter, Stage};

use crate::config::{Config, DeadLetterTo};

/// Writes dead letters durably to the configured destination. Cheap to
/// clone.
#[derive(Clone)]
pub struct DeadLetters {
    dest: Arc<Dest>,
    /// The slot the letters belong to (part of their id; the table's
    /// `slot` column).
    slot: Arc<str>,
}

enum Dest {
    /// Each append lands whole or not at all ([`LinesFile`]): a failed
    /// write is cut back before it is retried, and a torn line left by a
    /// crash is cut when the file is first opened (its letters were not
    /// counted as done, so they are written again).
    File { path: Arc<PathBuf>, file: Arc<Mutex<Option<LinesFile>>> },
    /// `pgfanout.dead_letters` in the source database, one transaction per
    /// write; a letter already there (the same change refused again after
    /// a restart) is kept as it is.
    Table { opts: Box<PgConnectOptions>, client: tokio::sync::Mutex<Option<tokio_postgres::Client>> },
    /// A compacted topic ([`kafka`]), each write acknowledged by all in-sync
    /// replicas; a letter written again is the same key.
    #[cfg(feature = "kafka")]
    Kafka(Box<pgfanout_kafka::letters::LetterTopic>),
}

impl DeadLetters {
    /// A JSON-lines file.
    pub fn file(path: impl Into<PathBuf>, slot: &str) -> Self {
        DeadLetters { dest: Arc::new(Dest::File { path: Arc::new(path.into()), file: Arc::new(Mutex::new(None)) }), slot: Arc::from(slot) }
    }

    /// The destination `cfg.dead_letter` names.
    pub fn from_config(cfg: &Config, opts: &PgConnectOptions) -> Result<Self, String> {
        let slot = &cfg.source.postgres.slot;
        let dest = match cfg.dead_letter.to {
            DeadLetterTo::File => return Ok(DeadLetters::file(&cfg.dead_letter.path, slot)),
            DeadLetterTo::Postgres => Dest::Table { opts: Box::new(opts.writer().clone()), client: tokio::sync::Mutex::new(None) },
            #[cfg(feature = "kafka")]
            DeadLetterTo::Kafka => Dest::Kafka(Box::new(kafka::topic(cfg)?)),
            #[cfg(not(feature = "kafka"))]
            DeadLetterTo::Kafka => return Err("dead_letter.to: kafka, but this pgfanout was built without the kafka feature".into()),
        };
        Ok(DeadLetters { dest: Arc::new(dest), slot: Arc::from(slot.as_str()) })
    }

    /// Where the letters go, for logs and the console.
    pub fn describe(&self) -> String {
        match &*self.dest {
            Dest::File { path, .. } => path.display().to_string(),
            Dest::Table { .. } => "table pgfanout.dead_letters".into(),
            #[cfg(feature = "kafka")]
            Dest::Kafka(topic) => format!("kafka topic {}", topic.topic()),
        }
    }

    /// Writes `letters` durably, retrying until it succeeds: a dead letter
    /// is never dropped (while the destination is down, the records wait
    /// and so does the confirmed position).
    pub async fn write(&self, letters: Vec<DeadLetter>) {
        if letters.is_empty() {
            return;
        }
        remember(&letters);
        let at = record::now_rfc3339();
        let mut backoff = Backoff::default();
        loop {
            let result = match &*self.dest {
                Dest::File { path, file } => self.append(path, file, &letters, &at).await,
                Dest::Table { opts, client } => self.insert(opts, client, &letters).await,
                #[cfg(feature = "kafka")]
                Dest::Kafka(topic) => topic.put(&self.entries(&letters, &at)).await,
            };
            match result {
                Ok(()) => return,
                Err(e) => error!(to = %self.describe(), error = %e, "cannot write dead letters; retrying"),
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    async fn append(
        &self,
        path: &Arc<PathBuf>,
        file: &Arc<Mutex<Option<LinesFile>>>,
        letters: &[DeadLetter],
        at: &str,
    ) -> Result<(), String> {
        let mut buf = Vec::new();
        for l in letters {
            l.write_json(&self.slot, at, 1, &mut buf);
            buf.push(b'\n');
        }
        let (path, file) = (path.clone(), file.clone());
        tokio::task::spawn_blocking(move || {
            let mut guard = file.lock().unwrap_or_else(|p| p.into_inner());
            if guard.is_none() {
                *guard = Some(LinesFile::open(&path).map_err(|e| e.to_string())?);
            }
            let result = guard.as_ref().map(|f| f.append(&buf)).unwrap_or(Ok(()));
            if result.is_err() {
                // Open it again next time (the file may have been replaced).
                *guard = None;
            }
            result.map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("dead-letter writer failed: {e}"))?
    }

    /// The letters as topic entries: id, JSON line.
    #[cfg(feature = "kafka")]
    fn entries(&self, letters: &[DeadLetter], at: &str) -> Vec<pgfanout_kafka::letters::Entry> {
        letters
            .iter()
            .map(|l| {
                let mut buf = Vec::new();
                l.write_json(&self.slot, at, 1, &mut buf);
                (l.id(&self.slot), Some(buf))
            })
            .collect()
    }

    async fn insert(
        &self,
        opts: &PgConnectOptions,
        client: &tokio::sync::Mutex<Option<tokio_postgres::Client>>,
        letters: &[DeadLetter],
    ) -> Result<(), String> {
        let mut guard = client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(connect_sql(opts).await.map_err(|e| e.to_string())?);
        }
        let Some(c) = guard.as_ref() else { return Err("no connection".into()) };
        let result = store::insert(c, &self.slot, letters).await;
        if result.is_err() {
            *guard = None;
        }
        result
    }
}

/// How many dead letters [`recent`] keeps.
const RECENT: usize = 20;

static RECENT_LETTERS: std::sync::LazyLock<Mutex<std::collections::VecDeque<RecentLetter>>> =
    std::sync::LazyLock::new(|| Mutex::new(std::collections::VecDeque::new()));

/// A dead letter as the console lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecentLetter {
    /// Unix time in seconds.
    pub at: f64,
    pub pipeline: String,
    pub sink: String,
    pub table: String,
    pub key: serde_json::Value,
    pub position: String,
    pub error: String,
}

fn remember(letters: &[DeadLetter]) {
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let mut recent = RECENT_LETTERS.lock().unwrap_or_else(|p| p.into_inner());
    for l in letters {
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(RecentLetter {
            at,
            pipeline: l.pipeline.to_string(),
            sink: l.sink.to_string(),
            table: l.change.qualified_table(),
            key: l.change.to_serde().get("key").cloned().unwrap_or_default(),
            position: l.change.position().to_string(),
            error: l.error.chars().take(2000).collect(),
        });
    }
}

/// The latest dead letters of this process (at most 20), newest first.
pub fn recent() -> Vec<RecentLetter> {
    RECENT_LETTERS.lock().unwrap_or_else(|p| p.into_inner()).iter().rev().cloned().collect()
}
