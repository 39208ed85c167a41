//! Dead letters read back, resolved and marked as refused again: the file
//! and the table behind `pgfanout dead-letters`.
//!
//! - **File**: append only. A replay appends, for each letter it delivered,
//!   `{"id": …, "resolved_at": …}`, and for each one refused again the letter
//!   with its new error and `attempts + 1`. Reading keeps the newest line of
//!   each id and drops resolved ones, so the daemon may keep appending while
//!   a replay runs.
//! - **Table** (`pgfanout.dead_letters`, migration 4): a delivered letter's
//!   row is deleted; a refused one is updated.

use std::collections::HashMap;
use std::io::Write as _;
use std::time::SystemTime;

use serde_json::{json, Value as J};
use tokio_postgres::Client;

use super::record::{now_rfc3339, DeadLetter, Stored};
use crate::config::{Config, DeadLetterTo};

/// Which letters a command looks at.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub sink: Option<String>,
    pub pipeline: Option<String>,
    /// Only letters written (or refused again) at or after this time.
    pub since: Option<SystemTime>,
}

impl Filter {
    fn keeps(&self, l: &Stored) -> bool {
        self.sink.as_deref().is_none_or(|s| s == l.sink)
            && self.pipeline.as_deref().is_none_or(|p| p == l.pipeline)
            && self.since.is_none_or(|since| humantime::parse_rfc3339_weak(&l.at).is_ok_and(|at| at >= since))
    }
}

/// The letters found, oldest position first.
#[derive(Debug, Default)]
pub struct Loaded {
    pub letters: Vec<Stored>,
    /// Lines that are not letters this pgfanout can read (written by an
    /// older version without an id, or damaged).
    pub unreadable: Vec<String>,
}

/// Where `pgfanout dead-letters` reads.
pub enum Store {
    File(std::path::PathBuf),
    Table {
        client: Client,
        slot: String,
    },
    #[cfg(feature = "kafka")]
    Kafka(Box<pgfanout_kafka::letters::LetterTopic>),
}

impl Store {
    /// The destination of `cfg.dead_letter`; `client` is the source
    /// connection (used for the table).
    pub fn of(cfg: &Config, client: Client) -> Result<Store, String> {
        match cfg.dead_letter.to {
            DeadLetterTo::File if cfg.dead_letter.path == "-" => {
                Err("dead_letter.path is - (stdout): the letters were printed, not kept; nothing to read back".into())
            }
            DeadLetterTo::File => Ok(Store::File(cfg.dead_letter.path.clone().into())),
            DeadLetterTo::Postgres => Ok(Store::Table { client, slot: cfg.source.postgres.slot.clone() }),
            #[cfg(feature = "kafka")]
            DeadLetterTo::Kafka => Ok(Store::Kafka(Box::new(super::kafka::topic(cfg)?))),
            #[cfg(not(feature = "kafka"))]
            DeadLetterTo::Kafka => Err("dead_letter.to: kafka, but this pgfanout was built without the kafka feature".into()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Store::File(p) => p.display().to_string(),
            Store::Table { .. } => "pgfanout.dead_letters".into(),
            #[cfg(feature = "kafka")]
            Store::Kafka(topic) => format!("kafka topic {}", topic.topic()),
        }
    }

    pub async fn load(&self, filter: &Filter) -> Result<Loaded, String> {
        let mut loaded = match self {
            Store::File(path) => load_file(path)?,
            Store::Table { client, slot } => load_table(client, slot).await?,
            #[cfg(feature = "kafka")]
            Store::Kafka(topic) => load_topic(topic)?,
        };
        loaded.letters.retain(|l| filter.keeps(l));
        loaded.letters.sort_by(|a, b| (a.position, &a.id).cmp(&(b.position, &b.id)));
        Ok(loaded)
    }

    /// Removes the letters `ids` (delivered now).
    pub async fn resolve(&self, ids: &[&str]) -> Result<(), String> {
        if ids.is_empty() {
            return Ok(());
        }
        match self {
            Store::File(path) => {
                let at = now_rfc3339();
                append_lines(path, ids.iter().map(|id| json!({ "id": id, "resolved_at": at })))
            }
            Store::Table { client, slot } => client
                .execute("DELETE FROM pgfanout.dead_letters WHERE slot = $1 AND id = ANY($2)", &[slot, &ids])
                .await
                .map(drop)
                .map_err(|e| format!("pgfanout.dead_letters: {e}")),
            #[cfg(feature = "kafka")]
            Store::Kafka(topic) => topic.put(&ids.iter().map(|id| (id.to_string(), None)).collect::<Vec<_>>()).await,
        }
    }

    /// Records that `refused` letters were tried again and refused (with
    /// the new error): `attempts + 1`.
    pub async fn refused(&self, refused: &[(&Stored, String)]) -> Result<(), String> {
        if refused.is_empty() {
            return Ok(());
        }
        match self {
            Store::File(path) => {
                let at = now_rfc3339();
                append_lines(path, refused.iter().map(|(l, e)| l.retried(e, &at)))
            }
            Store::Table { client, slot } => {
                let ids: Vec<&str> = refused.iter().map(|(l, _)| l.id.as_str()).collect();
                let errors: Vec<String> = refused.iter().map(|(_, e)| pg_text(e)).collect();
                client
                    .execute(
                        "UPDATE pgfanout.dead_letters d SET attempts = d.attempts + 1, error = u.error, at = now()
                         FROM unnest($2::text[], $3::text[]) AS u(id, error) WHERE d.slot = $1 AND d.id = u.id",
                        &[slot, &ids, &errors],
                    )
                    .await
                    .map(drop)
                    .map_err(|e| format!("pgfanout.dead_letters: {e}"))
            }
            #[cfg(feature = "kafka")]
            Store::Kafka(topic) => {
                let at = now_rfc3339();
                let entries: Vec<_> =
                    refused.iter().map(|(l, e)| (l.id.clone(), Some(l.retried(e, &at).to_string().into_bytes()))).collect();
                topic.put(&entries).await
            }
        }
    }
}

/// The daemon's write to the table: one statement, committed before the
/// records count as done. A letter already there is left as it is.
pub async fn insert(c: &Client, slot: &str, letters: &[DeadLetter]) -> Result<(), String> {
    let mut cols: [Vec<String>; 9] = Default::default();
    let mut ordinals: Vec<i64> = Vec::with_capacity(letters.len());
    for l in letters {
        let mut change = Vec::new();
        l.change.write_json(&mut change);
        let row = [
            l.id(slot),
            l.stage.as_str().to_string(),
            l.pipeline.to_string(),
            l.sink.to_string(),
            pg_text(&l.error),
            l.change.commit_lsn.to_string(),
            l.change.qualified_table(),
            String::from_utf8_lossy(&change).into_owned(),
            super::record::typed(l.source()).to_string(),
        ];
        for (col, v) in cols.iter_mut().zip(row) {
            col.push(v);
        }
        ordinals.push(i64::from(l.change.ordinal));
    }
    let [id, stage, pipeline, sink, error, lsn, table, change, source] = &cols;
    c.execute(
        "INSERT INTO pgfanout.dead_letters (id, slot, stage, pipeline, sink, error, commit_lsn, ordinal, table_name, change, source)
         SELECT u.id, $1, u.stage, u.pipeline, u.sink, u.error, u.lsn::pg_lsn, u.ordinal, u.tbl, u.change::json, u.source::json
         FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int8[], $9::text[], $10::text[], $11::text[])
           AS u(id, stage, pipeline, sink, error, lsn, ordinal, tbl, change, source)
         ON CONFLICT (id) DO NOTHING",
        &[&slot, id, stage, pipeline, sink, error, lsn, &ordinals, table, change, source],
    )
    .await
    .map(drop)
    .map_err(|e| format!("pgfanout.dead_letters: {e}"))
}

/// PostgreSQL text holds no NUL character; a store's error message might.
fn pg_text(s: &str) -> String {
    s.replace('\0', "\\0")
}

fn load_file(path: &std::path::Path) -> Result<Loaded, String> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut latest: HashMap<String, Option<Stored>> = HashMap::new();
    let mut order = Vec::new();
    let mut unreadable = Vec::new();
    // A torn last line (a crash mid-append) is not a letter yet.
    let complete = text.iter().rposition(|b| *b == b'\n').map_or(&[][..], |end| &text[..end]);
    for (n, line) in complete.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let parsed = serde_json::from_slice::<J>(line).map_err(|e| e.to_string());
        let entry = parsed.and_then(|v| {
            if v.get("resolved_at").is_some() {
                let id = v.get("id").and_then(J::as_str).ok_or("a resolution without an id")?;
                Ok((id.to_string(), None))
            } else {
                Stored::from_json(&v).map(|l| (l.id.clone(), Some(l)))
            }
        });
        match entry {
            Ok((id, letter)) => {
                if !latest.contains_key(&id) {
                    order.push(id.clone());
                }
                latest.insert(id, letter);
            }
            Err(e) => unreadable.push(format!("{}:{}: {e}", path.display(), n + 1)),
        }
    }
    let letters = order.into_iter().filter_map(|id| latest.remove(&id).flatten()).collect();
    Ok(Loaded { letters, unreadable })
}

/// The topic's latest entry per letter id; tombstones are resolved
/// letters.
#[cfg(feature = "kafka")]
fn load_topic(topic: &pgfanout_kafka::letters::LetterTopic) -> Result<Loaded, String> {
    let entries = tokio::task::block_in_place(|| topic.read())?;
    let mut loaded = Loaded::default();
    for (id, value) in entries {
        let Some(value) = value else { continue };
        match serde_json::from_slice::<J>(&value).map_err(|e| e.to_string()).and_then(|v| Stored::from_json(&v)) {
            Ok(l) => loaded.letters.push(l),
            Err(e) => loaded.unreadable.push(format!("{} key {id}: {e}", topic.topic())),
        }
    }
    Ok(loaded)
}

async fn load_table(c: &Client, slot: &str) -> Result<Loaded, String> {
    let rows = c
        .query(
            "SELECT id, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), attempts, stage, pipeline, sink, error,
                    commit_lsn::text, ordinal, table_name, change::text, source::text
             FROM pgfanout.dead_letters WHERE slot = $1",
            &[&slot],
        )
        .await
        .map_err(|e| format!("pgfanout.dead_letters: {e}"))?;
    let mut loaded = Loaded::default();
    for r in rows {
        let id: String = r.get(0);
        let parse = |i: usize| -> J {
            let text: Option<String> = r.get(i);
            text.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(J::Null)
        };
        let v = json!({
            "id": id, "at": r.get::<_, String>(1), "attempts": r.get::<_, i32>(2), "stage": r.get::<_, String>(3),
            "pipeline": r.get::<_, String>(4), "sink": r.get::<_, String>(5), "error": r.get::<_, String>(6),
            "commit_lsn": r.get::<_, String>(7), "ordinal": r.get::<_, i64>(8), "table": r.get::<_, String>(9),
            "change": parse(10), "source": parse(11),
        });
        match Stored::from_json(&v) {
            Ok(l) => loaded.letters.push(l),
            Err(e) => loaded.unreadable.push(format!("pgfanout.dead_letters id {id}: {e}")),
        }
    }
    Ok(loaded)
}

/// Appends whole lines and syncs them (no cut on open: the daemon may be
/// appending to the same file).
fn append_lines(path: &std::path::Path, lines: impl Iterator<Item = J>) -> Result<(), String> {
    let mut buf = Vec::new();
    for l in lines {
        buf.extend_from_slice(l.to_string().as_bytes());
        buf.push(b'\n');
    }
    let mut f = std::fs::OpenOptions::new().append(true).open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(&buf).and_then(|()| f.sync_data()).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pgfanout_sdk::{Change, Lsn, Op, Row, Value};

    use super::*;
    use crate::dead_letter::record::Stage;

    fn letter(id: i64, error: &str) -> DeadLetter {
        let key = Row(vec![("id".into(), Value::Number(id.to_string().into()))]);
        let change = Change {
            op: Op::Insert,
            schema: "public".into(),
            table: "t".into(),
            key: Some(key.clone()),
            before: None,
            after: Some(key),
            unchanged_toast: vec![],
            lsn: Lsn(10),
            commit_lsn: Lsn(100 - id as u64),
            ordinal: 0,
            xid: Some(1),
            commit_ts: Some(0),
        };
        DeadLetter {
            stage: Stage::Sink,
            pipeline: "p".into(),
            sink: "s".into(),
            error: error.into(),
            change: Arc::new(change),
            source: None,
        }
    }

    #[tokio::test]
    async fn the_file_keeps_the_newest_line_of_each_letter_and_forgets_resolved_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let mut buf = Vec::new();
        for l in [letter(1, "a"), letter(2, "b"), letter(1, "a")] {
            l.write_json("slot", "2026-12-07T00:00:00Z", 1, &mut buf);
            buf.push(b'\n');
        }
        buf.extend_from_slice(b"{\"torn");
        std::fs::write(&path, &buf).unwrap();
        let store = Store::File(path.clone());
        let loaded = store.load(&Filter::default()).await.unwrap();
        assert_eq!(loaded.letters.len(), 2, "the same letter twice is one; a torn line is none");
        assert!(loaded.unreadable.is_empty(), "{:?}", loaded.unreadable);
        assert_eq!(loaded.letters[0].error, "b", "oldest position first");
        // Drop the torn tail as the daemon would before appending.
        std::fs::write(&path, &buf[..buf.len() - 6]).unwrap();
        let first = &loaded.letters[0];
        store.refused(&[(first, "b again".into())]).await.unwrap();
        store.resolve(&[loaded.letters[1].id.as_str()]).await.unwrap();
        let after = store.load(&Filter::default()).await.unwrap();
        assert_eq!(after.letters.len(), 1);
        assert_eq!((after.letters[0].error.as_str(), after.letters[0].attempts), ("b again", 2));
        let later = Filter { since: Some(SystemTime::now() + std::time::Duration::from_secs(60)), ..Filter::default() };
        assert!(store.load(&later).await.unwrap().letters.is_empty());
        let other = Filter { sink: Some("elsewhere".into()), ..Filter::default() };
        assert!(store.load(&other).await.unwrap().letters.is_empty());
    }
}
