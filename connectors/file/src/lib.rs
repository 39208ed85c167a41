//! The `file` sink: change records as JSON lines, appended to a file or
//! written to stdout.
//!
//! The file is opened in append mode, so a restart never truncates what was
//! written before. A batch is durable once it is written and `fsync`ed
//! (`fdatasync`); stdout and other non-regular files (pipes, `/dev/null`) are
//! only flushed. Delivery is at-least-once: after a crash the records of
//! transactions not yet confirmed to PostgreSQL are appended again, so readers
//! de-duplicate on `lsn` when they need exactly-once.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use pgfanout_sdk::{BatchOutcome, Sink, SinkError, SinkRecord};

/// Where the lines go.
enum Target {
    Stdout,
    File { file: File, path: PathBuf, sync: bool },
}

/// JSON-lines sink.
pub struct FileSink {
    target: Option<Target>,
    buf: Vec<u8>,
}

impl FileSink {
    /// Opens `path` for appending (created if missing); `-` means stdout.
    pub fn open(path: &str) -> Result<FileSink, SinkError> {
        let target = if path == "-" {
            Target::Stdout
        } else {
            let path = PathBuf::from(path);
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| SinkError::Permanent(format!("cannot create directory {}: {e}", parent.display())))?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| SinkError::Permanent(format!("cannot open {} for appending: {e}", path.display())))?;
            let sync = file.metadata().map(|m| m.file_type().is_file()).unwrap_or(false);
            Target::File { file, path, sync }
        };
        Ok(FileSink { target: Some(target), buf: Vec::with_capacity(1 << 20) })
    }

    /// Writes already-encoded lines durably.
    async fn write_encoded(&mut self) -> Result<(), SinkError> {
        let target = self.target.take().ok_or_else(|| SinkError::Permanent("file sink used after a failed write".into()))?;
        let buf = std::mem::take(&mut self.buf);
        let (target, mut buf, result) = tokio::task::spawn_blocking(move || {
            let result = match &target {
                Target::Stdout => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&buf).and_then(|_| out.flush())
                }
                Target::File { file, sync, .. } => {
                    let mut f = file;
                    f.write_all(&buf).and_then(|_| if *sync { file.sync_data() } else { Ok(()) })
                }
            };
            (target, buf, result)
        })
        .await
        .map_err(|e| SinkError::Retriable(format!("file writer task failed: {e}")))?;
        let path = match &target {
            Target::Stdout => "stdout".to_string(),
            Target::File { path, .. } => path.display().to_string(),
        };
        self.target = Some(target);
        buf.clear();
        self.buf = buf;
        result.map_err(|e| SinkError::Retriable(format!("write to {path} failed: {e}")))
    }
}

impl Sink for FileSink {
    async fn write(&mut self, batch: &[SinkRecord]) -> BatchOutcome {
        self.buf.clear();
        for record in batch {
            record.change.write_json(&mut self.buf);
            self.buf.push(b'\n');
        }
        self.write_encoded().await?;
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pgfanout_sdk::{Change, Lsn, Op, Row, Value};

    use super::*;

    fn record(id: u32) -> SinkRecord {
        let row = Row(vec![("id".into(), Value::Number(id.to_string().into()))]);
        SinkRecord {
            change: Arc::new(Change {
                op: Op::Insert,
                schema: "public".into(),
                table: "t".into(),
                key: Some(row.clone()),
                before: None,
                after: Some(row),
                unchanged_toast: vec![],
                lsn: Lsn(u64::from(id)),
                commit_lsn: Lsn(u64::from(id)),
                ordinal: 0,
                xid: Some(1),
                commit_ts: Some(0),
            }),
            route: 0,
        }
    }

    #[tokio::test]
    async fn appends_and_never_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.jsonl");
        let p = path.to_str().unwrap();
        let mut sink = FileSink::open(p).unwrap();
        assert!(sink.write(&[record(1), record(2)]).await.unwrap().is_empty());
        drop(sink);
        let mut sink = FileSink::open(p).unwrap();
        sink.write(&[record(3)]).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<i64> =
            text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["after"]["id"].as_i64().unwrap()).collect();
        assert_eq!(ids, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn writes_to_dev_null() {
        let mut sink = FileSink::open("/dev/null").unwrap();
        sink.write(&[record(1)]).await.unwrap();
    }
}
