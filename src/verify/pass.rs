//! Verifying one pipeline: the store's key space listed first, the source
//! read in key order under one snapshot and compared entry by entry, the
//! differences rechecked against newer snapshots once the stream passed
//! them, then repaired when asked (see the module doc of `crate::verify`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfanout_postgres::catalog::TypeRegistry;
use pgfanout_postgres::slot::TableName;
use pgfanout_postgres::snapshot::keyed::{KeyText, KeyedTable};
use pgfanout_sdk::verify::diff_fields;
use pgfanout_sdk::{Change, Expected, Lsn, Op, SinkRecord, Verifier};
use serde_json::Value as Json;
use tokio_postgres::Client;

use super::options::{ProgressFn, VerifyOptions};
use super::outcome::{Divergence, Kind, Outcome};
use crate::config::{Config, TablePattern};
use crate::pipeline::{Routed, Router};

pub(super) struct Ctx<'a> {
    pub cfg: &'a Config,
    pub opts: &'a VerifyOptions,
    pub router: &'a Router,
    pub client: &'a Client,
    /// On the server holding the slot (the standby when decoding on one).
    pub slot_client: &'a Client,
    pub progress: &'a ProgressFn<'a>,
}

/// The source tables of one pipeline, planned.
struct Tables {
    tables: Vec<KeyedTable>,
}

impl Ctx<'_> {
    pub async fn pipeline(&self, index: usize) -> Outcome {
        let mut out = Outcome::default();
        if let Err(e) = self.pipeline_inner(index, &mut out).await {
            out.error = Some(e);
        }
        out
    }

    async fn pipeline_inner(&self, index: usize, out: &mut Outcome) -> Result<(), String> {
        let p = &self.cfg.pipelines[index];
        if let Some(ops) = &p.ops {
            if !(ops.contains(&Op::Insert) && ops.contains(&Op::Update)) {
                out.skipped = Some("its `ops` leave out inserts or updates, so the store need not hold the rows' current state".into());
                return Ok(());
            }
        }
        let sink = self.cfg.sinks.get(&p.to).ok_or_else(|| format!("unknown sink {:?}", p.to))?;
        let configured = sink.configured.as_ref().ok_or("sink not configured (internal error)")?;
        let route = self.cfg.pipelines[..index].iter().filter(|q| q.to == p.to).count();
        if let Err(why) = configured.verifiable(route) {
            out.skipped = Some(why);
            return Ok(());
        }
        let mut verifier = configured.verifier(route).await.map_err(|e| format!("sink {}: {e}", p.to))?;
        let tables = self.tables_of(index).await?;
        let sampled = self.opts.sample.is_some_and(|f| f < 1.0);
        let extras_possible = !sampled && p.filter.is_none();

        // 1. The store's key space, listed before the source is read.
        let listed = if extras_possible { verifier.list().await.map_err(|e| format!("listing the store: {e}"))? } else { None };

        // 2. The source pass.
        let filter = self.opts.sample.filter(|f| *f < 1.0).map(|f| format!("random() < {f}"));
        self.client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(|e| e.to_string())?;
        let pass = self.source_pass(index, &tables, verifier.as_mut(), filter.as_deref(), out).await;
        let _ = self.client.batch_execute("COMMIT").await;
        let seen = pass?;
        // The store listed before the read may miss entries of rows inserted
        // since; list again now for the key spaces templates revealed (new
        // indexes), keeping only the ids of the first listing.
        if let Some(listed) = listed {
            out.extras_checked = true;
            for id in listed {
                if !seen.contains(&id) {
                    out.divergent.push(Divergence { id, kind: Kind::Extra, source: None, stored: None });
                }
            }
        } else if extras_possible {
            // Templated key spaces are only known after the pass.
            if let Some(listed) = verifier.list().await.map_err(|e| format!("listing the store: {e}"))? {
                out.extras_checked = true;
                for id in listed {
                    if !seen.contains(&id) {
                        out.divergent.push(Divergence { id, kind: Kind::Extra, source: None, stored: None });
                    }
                }
            }
        }

        // 3. Rechecks while the stream catches up.
        out.candidates = out.divergent.len() as u64;
        for _round in 0..3 {
            if out.divergent.is_empty() || out.unsettled {
                break;
            }
            self.recheck(index, &tables, verifier.as_mut(), out).await?;
        }

        // 4. Repair.
        if self.opts.repair && !out.divergent.is_empty() {
            self.repair(index, route, &tables, verifier.as_mut(), out).await?;
        }
        Ok(())
    }

    /// The rows the source pass will read, from `pg_class.reltuples` (with
    /// `--sample`, that share of it); `None` when never analyzed.
    async fn estimate(&self, tables: &Tables) -> Option<u64> {
        let names: Vec<String> = tables.tables.iter().map(|t| t.name().quoted()).collect();
        let row = self
            .client
            .query_one(
                "SELECT sum(greatest(c.reltuples, 0))::float8, bool_or(c.reltuples >= 0) FROM unnest($1::text[]) AS t(name) \
                 JOIN pg_catalog.pg_class c ON c.oid = to_regclass(t.name)",
                &[&names],
            )
            .await
            .ok()?;
        let (sum, analyzed): (Option<f64>, Option<bool>) = (row.get(0), row.get(1));
        let share = self.opts.sample.unwrap_or(1.0).clamp(0.0, 1.0);
        analyzed.unwrap_or(false).then(|| (sum.unwrap_or(0.0) * share) as u64)
    }

    /// The tables of pipeline `index` (ordinary and partitioned tables that
    /// its `from` patterns match; partitions are read under their root's
    /// name, as the stream names them), planned for keyset reads.
    async fn tables_of(&self, index: usize) -> Result<Tables, String> {
        let p = &self.cfg.pipelines[index];
        let patterns: Vec<TablePattern> = p.from.items().into_iter().filter_map(|s| TablePattern::parse(s).ok()).collect();
        let rows = self
            .client
            .query(
                "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgfanout') \
                 ORDER BY 1, 2",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut types = TypeRegistry::new();
        let mut tables = Vec::new();
        for r in rows {
            let (schema, table): (String, String) = (r.get(0), r.get(1));
            if patterns.iter().any(|pat| pat.matches(&schema, &table)) {
                let t = TableName::new(schema, table);
                let publication = Some(self.cfg.source.postgres.publication.as_str());
                tables.extend(KeyedTable::plan(self.client, &mut types, &t, publication).await.map_err(|e| e.to_string())?);
            }
        }
        Ok(Tables { tables })
    }

    /// Reads every table of the pipeline in key order and compares the
    /// store; returns every id a row produced.
    async fn source_pass(
        &self,
        index: usize,
        tables: &Tables,
        verifier: &mut dyn Verifier,
        filter: Option<&str>,
        out: &mut Outcome,
    ) -> Result<HashSet<String>, String> {
        let snapshot = self.position().await?;
        let estimate = self.estimate(tables).await;
        let pipeline = &self.cfg.pipelines[index].name;
        (self.progress)(pipeline, 0, estimate);
        let mut seen = HashSet::new();
        let started = Instant::now();
        let mut pending: Vec<(Expected, (usize, KeyText))> = Vec::new();
        for (t, table) in tables.tables.iter().enumerate() {
            let mut after: Option<KeyText> = None;
            loop {
                let rows = table
                    .chunk(self.client, after.as_ref(), self.opts.chunk_rows, filter, snapshot)
                    .await
                    .map_err(|e| format!("reading {}: {e}", table.name()))?;
                let Some((_, last)) = rows.last() else { break };
                after = Some(last.clone());
                let n = rows.len();
                for (change, key) in rows {
                    out.rows += 1;
                    for e in self.expect(index, verifier, change, out) {
                        seen.insert(e.id.clone());
                        pending.push((e, (t, key.clone())));
                    }
                }
                if pending.len() >= 500 {
                    self.compare(verifier, std::mem::take(&mut pending), out).await?;
                }
                self.throttle(started, out.rows).await;
                (self.progress)(pipeline, out.rows, estimate);
                if n < self.opts.chunk_rows {
                    break;
                }
            }
        }
        self.compare(verifier, pending, out).await?;
        Ok(seen)
    }

    /// The entries pipeline `index` must produce for one source row.
    fn expect(&self, index: usize, verifier: &mut dyn Verifier, change: Change, out: &mut Outcome) -> Vec<Expected> {
        match self.router.route_pipeline(index, &Arc::new(change)) {
            Some(Routed::Deliver { record, .. }) => match verifier.expect(&record) {
                Ok(entries) => {
                    out.entries += entries.len() as u64;
                    entries
                }
                Err(_) => {
                    out.unmappable += 1;
                    Vec::new()
                }
            },
            Some(Routed::DeadLetter { .. }) => {
                out.unmappable += 1;
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    /// Reads the store for `pending` and records what differs.
    async fn compare(
        &self,
        verifier: &mut dyn Verifier,
        pending: Vec<(Expected, (usize, KeyText))>,
        out: &mut Outcome,
    ) -> Result<(), String> {
        for part in pending.chunks(500) {
            let ids: Vec<String> = part.iter().map(|(e, _)| e.id.clone()).collect();
            let stored = verifier.read(&ids).await.map_err(|e| format!("reading the store: {e}"))?;
            for ((expected, source), actual) in part.iter().zip(stored) {
                let kind = match &actual {
                    None => Kind::Missing,
                    Some(actual) => {
                        let fields = diff_fields(&expected.value, actual);
                        if fields.is_empty() {
                            continue;
                        }
                        Kind::Different(fields)
                    }
                };
                out.divergent.push(Divergence { id: expected.id.clone(), kind, source: Some(source.clone()), stored: actual });
            }
        }
        Ok(())
    }

    async fn throttle(&self, started: Instant, rows: u64) {
        if let Some(rate) = self.opts.max_rows_per_second.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(rows as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// Waits until the slot's confirmed position (every sink durable) is at
    /// least `position`; false when `--settle` passed first.
    async fn settled(&self, position: Lsn) -> Result<bool, String> {
        let slot = &self.cfg.source.postgres.slot;
        let deadline = Instant::now() + self.opts.settle;
        loop {
            let row = self
                .slot_client
                .query_opt("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[slot])
                .await
                .map_err(|e| e.to_string())?;
            let confirmed: Option<Lsn> = row.and_then(|r| r.get::<_, Option<String>>(0)).and_then(|s| s.parse().ok());
            if confirmed.is_some_and(|c| c >= position) {
                return self.group_settled(deadline).await;
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// With `source.kafka` (an applier's config) the slot's position only
    /// says the changes are in Kafka: then wait until the appliers' group
    /// has committed every partition up to the end offsets read now, which
    /// it does once the stores have the records (the way `/wait` answers
    /// for a group). False when `deadline` passes first.
    #[cfg(feature = "kafka")]
    async fn group_settled(&self, deadline: Instant) -> Result<bool, String> {
        let (Some(kafka), Some(group)) = (self.cfg.source.kafka.clone(), self.cfg.source.kafka_group()) else {
            return Ok(true);
        };
        tokio::task::spawn_blocking(move || {
            let watch = pgfanout_kafka::source::GroupWatch::new(&kafka, &group).map_err(|e| format!("source.kafka: {e}"))?;
            let timeout = Duration::from_secs(10);
            let ends = watch.ends(timeout).map_err(|e| format!("source.kafka: the topics' end offsets: {e}"))?;
            loop {
                if watch.reached(&ends, timeout).map_err(|e| format!("source.kafka: the group's offsets: {e}"))? {
                    return Ok(true);
                }
                if Instant::now() >= deadline {
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await
        .map_err(|e| e.to_string())?
    }

    #[cfg(not(feature = "kafka"))]
    async fn group_settled(&self, _deadline: Instant) -> Result<bool, String> {
        Ok(true)
    }

    /// Checks the divergent entries again: their rows are read again under
    /// a new snapshot, and the store once the stream has passed it (so the
    /// store holds at least what the snapshot shows).
    async fn recheck(&self, index: usize, tables: &Tables, verifier: &mut dyn Verifier, out: &mut Outcome) -> Result<(), String> {
        let previous = std::mem::take(&mut out.divergent);
        let (by_table, mut extras) = keys_by_table(&previous);
        let ids_of_rows: HashSet<String> = previous.iter().filter(|d| d.source.is_some()).map(|d| d.id.clone()).collect();
        let (position, rows) = self.rows_at_new_snapshot(tables, &by_table).await?;
        if !self.settled(position).await? {
            out.unsettled = true;
            out.divergent = previous;
            return Ok(());
        }
        let mut pending = Vec::new();
        let mut produced: HashSet<String> = HashSet::new();
        let mut scratch = Outcome::default();
        for (t, change, key) in rows {
            for e in self.expect(index, verifier, change, &mut scratch) {
                produced.insert(e.id.clone());
                pending.push((e, (t, key.clone())));
            }
        }
        let before = out.divergent.len();
        self.compare(verifier, pending, out).await?;
        // The store was read after the stream passed `position`, so it may
        // already hold later changes: what still differs is compared with
        // the rows as of a snapshot taken after that read too. An entry
        // equal to it (or absent, its row gone) held a state the source
        // had: not divergent.
        if out.divergent.len() > before {
            let fresh = out.divergent.split_off(before);
            let kept = self.sandwich(index, tables, verifier, fresh).await?;
            out.divergent.extend(kept);
        }
        // Entries of rows deleted (or moved) since: they must be gone now.
        extras.extend(ids_of_rows.into_iter().filter(|id| !produced.contains(id)));
        if !extras.is_empty() {
            // An extra is an entry still stored that no current row maps
            // to: read it again, then look for a row producing it.
            let stored = verifier.read(&extras).await.map_err(|e| format!("reading the store: {e}"))?;
            let mut still: Vec<String> = extras.into_iter().zip(stored).filter(|(_, v)| v.is_some()).map(|(id, _)| id).collect();
            if !still.is_empty() {
                let wanted: HashSet<String> = still.iter().cloned().collect();
                self.client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(|e| e.to_string())?;
                let found = self.ids_produced(index, tables, verifier, &wanted).await;
                let _ = self.client.batch_execute("COMMIT").await;
                let found = found?;
                still.retain(|id| !found.contains(id));
            }
            out.divergent.extend(still.into_iter().map(|id| Divergence { id, kind: Kind::Extra, source: None, stored: None }));
        }
        Ok(())
    }

    /// Of `fresh` (divergences with their stored values, read just now),
    /// those the source's rows as of a new snapshot still disagree with.
    async fn sandwich(
        &self,
        index: usize,
        tables: &Tables,
        verifier: &mut dyn Verifier,
        fresh: Vec<Divergence>,
    ) -> Result<Vec<Divergence>, String> {
        let (by_table, _) = keys_by_table(&fresh);
        let (_, rows) = self.rows_at_new_snapshot(tables, &by_table).await?;
        let mut now: HashMap<String, Json> = HashMap::new();
        let mut scratch = Outcome::default();
        for (_, change, _) in rows {
            for e in self.expect(index, verifier, change, &mut scratch) {
                now.insert(e.id, e.value);
            }
        }
        Ok(fresh
            .into_iter()
            .filter(|d| match (now.get(&d.id), &d.stored) {
                (Some(want), Some(have)) => !diff_fields(want, have).is_empty(),
                (None, None) => false,
                _ => true,
            })
            .collect())
    }

    /// The rows of `by_table`'s keys under one new snapshot: its position
    /// and each row with its table.
    async fn rows_at_new_snapshot(
        &self,
        tables: &Tables,
        by_table: &HashMap<usize, Vec<KeyText>>,
    ) -> Result<(Lsn, Vec<(usize, Change, KeyText)>), String> {
        self.client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(|e| e.to_string())?;
        let read = async {
            let position = self.position().await?;
            let mut rows = Vec::new();
            for (t, keys) in by_table {
                for (change, key) in tables.tables[*t].rows_by_key(self.client, keys, position).await.map_err(|e| e.to_string())? {
                    rows.push((*t, change, key));
                }
            }
            Ok::<_, String>((position, rows))
        }
        .await;
        let _ = self.client.batch_execute("COMMIT").await;
        read
    }

    /// `pg_current_wal_insert_lsn()`: at or after the commit of every
    /// transaction the snapshot sees, also under `synchronous_commit = off`
    /// (where the write position `pg_current_wal_lsn()` can lag a commit).
    async fn position(&self) -> Result<Lsn, String> {
        let text: String = self.client.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.map_err(|e| e.to_string())?.get(0);
        text.parse().map_err(|_| format!("bad LSN {text}"))
    }

    /// Which of `wanted` some current source row of the pipeline produces
    /// (a full pass over the source, without reading the store).
    async fn ids_produced(
        &self,
        index: usize,
        tables: &Tables,
        verifier: &mut dyn Verifier,
        wanted: &HashSet<String>,
    ) -> Result<HashSet<String>, String> {
        let position = self.position().await?;
        let mut found = HashSet::new();
        let mut scratch = Outcome::default();
        for table in &tables.tables {
            let mut after: Option<KeyText> = None;
            loop {
                let rows =
                    table.chunk(self.client, after.as_ref(), self.opts.chunk_rows, None, position).await.map_err(|e| e.to_string())?;
                let Some((_, last)) = rows.last() else { break };
                after = Some(last.clone());
                let n = rows.len();
                for (change, _) in rows {
                    for e in self.expect(index, verifier, change, &mut scratch) {
                        if wanted.contains(&e.id) {
                            found.insert(e.id);
                        }
                    }
                }
                if n < self.opts.chunk_rows {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// Writes the divergent rows again through the sink and removes extras.
    async fn repair(
        &self,
        index: usize,
        route: usize,
        tables: &Tables,
        verifier: &mut dyn Verifier,
        out: &mut Outcome,
    ) -> Result<(), String> {
        let p = &self.cfg.pipelines[index];
        let configured = self.cfg.sinks.get(&p.to).and_then(|s| s.configured.clone()).ok_or("sink not configured")?;
        let mut sink = configured.build().await.map_err(|e| format!("sink {}: {e}", p.to))?;
        let (by_table, extras) = keys_by_table(&out.divergent);
        let (_, rows) = self.rows_at_new_snapshot(tables, &by_table).await?;
        let mut records: Vec<SinkRecord> = Vec::new();
        for (_, change, _) in rows {
            if let Some(Routed::Deliver { record, .. }) = self.router.route_pipeline(index, &Arc::new(change)) {
                records.push(SinkRecord { change: record.change, route, source: None });
            }
        }
        let mut repaired = 0u64;
        for batch in records.chunks(500) {
            let mut backoff = pgfanout_sdk::settings::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
            let mut attempts = 0;
            loop {
                match sink.write_boxed(batch).await {
                    Ok(rejected) => {
                        for r in &rejected {
                            tracing::warn!(pipeline = %p.name, error = %r.error, "repair of a row refused by the store");
                        }
                        repaired += (batch.len() - rejected.len()) as u64;
                        break;
                    }
                    Err(e) if e.is_retriable() && attempts < 10 => {
                        attempts += 1;
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    Err(e) => return Err(format!("repair write: {e}")),
                }
            }
        }
        let _ = sink.close_boxed().await;
        if !extras.is_empty() {
            verifier.remove(&extras).await.map_err(|e| format!("removing extra entries: {e}"))?;
            repaired += extras.len() as u64;
        }
        out.repaired = repaired;
        Ok(())
    }
}

/// The source keys of `divergent` per table (each once), and the ids of
/// the extras (entries without a source row).
fn keys_by_table(divergent: &[Divergence]) -> (HashMap<usize, Vec<KeyText>>, Vec<String>) {
    let mut by_table: HashMap<usize, Vec<KeyText>> = HashMap::new();
    let mut extras = Vec::new();
    for d in divergent {
        match &d.source {
            Some((t, key)) => {
                let keys = by_table.entry(*t).or_default();
                if !keys.contains(key) {
                    keys.push(key.clone());
                }
            }
            None => extras.push(d.id.clone()),
        }
    }
    (by_table, extras)
}
