//! The dead-letter file: records that cannot be delivered, with their error.
//!
//! A record lands here when a sink rejects it permanently or when its
//! pipeline's filter or a transform fails. The entry is appended and
//! `fsync`ed before the record counts as done, so nothing vanishes: either
//! the record is in its sink or it is here, with the reason.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pgfanout_file::LinesFile;
use pgfanout_sdk::{json, Change};
use tracing::error;

use pgfanout_sdk::settings::Backoff;

/// One undeliverable record.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub pipeline: Arc<str>,
    pub sink: Arc<str>,
    pub error: String,
    pub change: Arc<Change>,
}

impl DeadLetter {
    /// `{"pipeline","sink","error","commit_lsn","ordinal","change":{...}}`
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"pipeline\":");
        json::write_str(out, &self.pipeline);
        out.extend_from_slice(b",\"sink\":");
        json::write_str(out, &self.sink);
        out.extend_from_slice(b",\"error\":");
        json::write_str(out, &self.error);
        out.extend_from_slice(b",\"commit_lsn\":");
        json::write_str(out, &self.change.commit_lsn.to_string());
        out.extend_from_slice(format!(",\"ordinal\":{},\"change\":", self.change.ordinal).as_bytes());
        self.change.write_json(out);
        out.push(b'}');
    }
}

/// Appends dead letters durably. Cheap to clone.
///
/// Each append lands whole or not at all ([`LinesFile`]): a failed write is
/// cut back before it is retried, and a torn line left by a crash is cut
/// when the file is first opened (its letters were not counted as done, so
/// they are written again).
#[derive(Clone)]
pub struct DeadLetters {
    path: Arc<PathBuf>,
    file: Arc<Mutex<Option<LinesFile>>>,
}

impl DeadLetters {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DeadLetters { path: Arc::new(path.into()), file: Arc::new(Mutex::new(None)) }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Appends and syncs `letters`, retrying until it succeeds: a dead
    /// letter is never dropped.
    pub async fn write(&self, letters: Vec<DeadLetter>) {
        if letters.is_empty() {
            return;
        }
        remember(&letters);
        let mut buf = Vec::new();
        for l in &letters {
            l.write_json(&mut buf);
            buf.push(b'\n');
        }
        let buf = Arc::new(buf);
        let mut backoff = Backoff::default();
        loop {
            let path = self.path.clone();
            let file = self.file.clone();
            let data = buf.clone();
            let result = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                let mut guard = file.lock().unwrap_or_else(|p| p.into_inner());
                if guard.is_none() {
                    *guard = Some(LinesFile::open(&path)?);
                }
                let result = guard.as_ref().map(|f| f.append(&data)).unwrap_or(Ok(()));
                if result.is_err() {
                    // Open it again next time (the file may have been replaced).
                    *guard = None;
                }
                result
            })
            .await;
            match result {
                Ok(Ok(())) => return,
                Ok(Err(e)) => error!(path = %self.path.display(), error = %e, "cannot write dead letters; retrying"),
                Err(e) => error!(path = %self.path.display(), error = %e, "dead-letter writer failed; retrying"),
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
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
