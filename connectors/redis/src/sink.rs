//! The Redis sink: connections, lanes, pipelined round trips per lane, and
//! the reading of per-record outcomes.
//!
//! A batch is split into lanes by a hash of each record's key, so two
//! changes of one key always travel on the same connection, in order. Each
//! lane sends one pipeline of `EVALSHA` calls (each applying up to
//! `records_per_call` records through `apply.lua`) per batch, and a batch is
//! done (`Ok`) only once Redis has acknowledged every operation of it.
//! A record whose old target sits in another lane (an update that moved a
//! row or member between keys) is still safe when it writes whole values:
//! every target is version-guarded, so whichever lane runs first, the older
//! write is skipped.
//!
//! A moved row that is completed from its old entry (an update that changed
//! the key and left TOASTed columns unchanged, so PostgreSQL sent neither
//! their values nor, under the default replica identity, the old row) needs
//! every earlier change of the OLD key applied before it: it travels in the
//! old key's lane ([`Encoded::lane_from`]), where those changes are, and
//! copies the values from the old entry in the same script call that removes
//! it. That leaves one race: a later change of the NEW key, hashed to
//! another lane, could run before the move. A whole row would still win by
//! version (the move then skips itself), but a partial one would find no
//! stored entry and be refused. So from the move on, the new key is
//! redirected to the move's lane ([`Lanes`]): every later record of it, in
//! this batch and in later ones, goes there too (a chain of moves follows
//! along), until every batch that used the redirect is acknowledged; then
//! the move is in Redis and the key's own lane is safe again. Earlier
//! records of the new key (a delete before the row moved in) may still run
//! after the move in their own lane; they are older, so the version guard
//! skips them. What remains is what the script cannot know: a new key whose
//! earlier change was lost (expired by a TTL, deleted by hand) is completed
//! or refused as the script's rules say.
//!
//! Pipelining (`in_flight_batches`, default 3): [`Sink::submit`] sends a
//! batch's lane pipelines and returns without waiting for the replies, so
//! the next batch is encoded and sent while Redis works on the one before.
//! Each lane has its own connection for this, which never reconnects by
//! itself: Redis runs the commands of one connection in the order they
//! arrive, and once it drops, every later command sent on it fails too, so
//! the batches that reached Redis are always a prefix of those submitted on
//! that lane. A failed batch sets `stopped`; the next `submit` is refused
//! (`Permanent`), which makes the runtime finish everything in flight
//! (writing each failed batch again, in order, with [`Sink::write`] over the
//! reconnecting lanes) before it writes anything newer; then the pipelining
//! connections are opened anew. Each pipeline starts with `SCRIPT LOAD` of
//! the apply script (a cache hit in Redis), so a restarted or flushed server
//! cannot answer `NOSCRIPT` to calls queued behind a failed batch.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures_util::future::join_all;
use pgfanout_sdk::{BatchOutcome, InFlight, PipelineStop, Rejected, Sink, SinkError, SinkRecord};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Cmd, IntoConnectionInfo, Pipeline, RedisResult, Script, Value};
use tracing::{debug, info, warn};

use pgfanout_sdk::settings::TlsFiles;

use crate::config::{redact, MappingKind, RedisMapping, RedisSinkConfig};
use crate::encode::{encode, CompiledMapping, Encoded};
use crate::error::{is_transient_reply, request_failed};

const APPLY_LUA: &str = include_str!("apply.lua");

/// A connected Redis sink; see the crate docs for the mappings.
pub struct RedisSink {
    /// One reconnecting connection per lane, for [`Sink::write`].
    lanes: Vec<ConnectionManager>,
    client: Client,
    url: String,
    pipelining_config: AsyncConnectionConfig,
    /// One connection per lane for [`Sink::submit`]; `None` until the first
    /// submit and after a failure (see the module docs).
    pipelining: Option<Vec<MultiplexedConnection>>,
    /// A pipelined batch failed since the last refused submit.
    stopped: PipelineStop,
    in_flight: usize,
    routes: Vec<CompiledMapping>,
    script: Script,
    prefix: String,
    tombstone_secs: String,
    records_per_call: usize,
    lanes_plan: Lanes,
}

/// Which lane each record takes: a hash of its key, except for keys a
/// moved row was completed into (see the module docs), which follow the
/// move's lane while a batch that routed a record that way is unacknowledged.
#[derive(Debug)]
pub(crate) struct Lanes {
    n: usize,
    /// Key -> (lane, sequence number of the latest batch routed by it).
    redirects: HashMap<String, (usize, u64)>,
    /// Batches planned and not yet acknowledged (or dropped).
    pending: Arc<Mutex<BTreeSet<u64>>>,
    next_seq: u64,
}

/// A planned batch: its sequence number leaves [`Lanes`]' pending set when
/// this is dropped (after the batch's replies are read, or when abandoned).
pub(crate) struct BatchGuard {
    pending: Arc<Mutex<BTreeSet<u64>>>,
    seq: u64,
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.seq);
    }
}

impl Lanes {
    pub(crate) fn new(n: usize) -> Lanes {
        Lanes { n: n.max(1), redirects: HashMap::new(), pending: Arc::default(), next_seq: 0 }
    }

    fn hashed(&self, key: &str) -> usize {
        if self.n == 1 {
            return 0;
        }
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % self.n as u64) as usize
    }

    /// The lane of each record, in order, and the guard to drop once the
    /// batch is acknowledged.
    pub(crate) fn assign(&mut self, encoded: &[(usize, Encoded<'_>)]) -> (Vec<usize>, Option<BatchGuard>) {
        if self.n == 1 {
            return (vec![0; encoded.len()], None);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            // Every batch before the oldest pending one is acknowledged.
            let oldest = pending.first().copied().unwrap_or(u64::MAX);
            self.redirects.retain(|_, (_, last)| *last >= oldest);
            pending.insert(seq);
        }
        let guard = BatchGuard { pending: Arc::clone(&self.pending), seq };
        let mut out = Vec::with_capacity(encoded.len());
        for (_, enc) in encoded {
            let lane = match &enc.lane_from {
                Some(from) => {
                    let lane = self.lane_of(from, seq);
                    if *from != enc.lane_key {
                        self.redirects.insert(enc.lane_key.clone(), (lane, seq));
                    }
                    lane
                }
                None => self.lane_of(&enc.lane_key, seq),
            };
            out.push(lane);
        }
        (out, Some(guard))
    }

    fn lane_of(&mut self, key: &str, seq: u64) -> usize {
        match self.redirects.get_mut(key) {
            Some((lane, last)) => {
                *last = seq;
                *lane
            }
            None => self.hashed(key),
        }
    }
}

/// The script calls of one lane: the pipeline, and for each call the batch
/// index of each of its operations.
struct LaneWork {
    lane: usize,
    pipe: Pipeline,
    op_records: Vec<Vec<usize>>,
}

/// A lane's replies: for each script call the batch index of each of its
/// operations, and the calls' replies (or why there are none).
type LaneReplies = (Vec<Vec<usize>>, Result<Vec<Value>, SinkError>);

/// A lane pipeline sent on a pipelining connection, awaiting its reply.
type Sent = Pin<Box<dyn Future<Output = RedisResult<Value>> + Send>>;

impl RedisSink {
    /// Connects every lane (ConnectionManager, reconnecting on its own),
    /// loads the apply script, and checks that RedisJSON is present when a
    /// route uses `type: json`. `routes[i]` is the mapping of route `i`
    /// ([`SinkRecord::route`]). An invalid config or mapping, or a missing
    /// module, is [`SinkError::Permanent`]; an unreachable server is
    /// [`SinkError::Retriable`].
    pub async fn connect(cfg: &RedisSinkConfig, routes: Vec<RedisMapping>) -> Result<RedisSink, SinkError> {
        if let Some((path, msg)) = cfg.validate().into_iter().next() {
            return Err(SinkError::Permanent(format!("redis sink: {path}: {msg}")));
        }
        let routes = routes
            .iter()
            .enumerate()
            .map(|(i, m)| CompiledMapping::compile(m).map_err(|e| SinkError::Permanent(format!("redis mapping of route {i}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let client = build_client(cfg)?;
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(Some(cfg.response_timeout))
            .set_max_delay(cfg.reconnect_max_delay)
            .set_min_delay(Duration::from_millis(50));
        let pipelining_config =
            AsyncConnectionConfig::new().set_connection_timeout(Some(cfg.connect_timeout)).set_response_timeout(Some(cfg.response_timeout));
        let mut lanes = Vec::with_capacity(cfg.connections);
        for _ in 0..cfg.connections {
            let conn = ConnectionManager::new_with_config(client.clone(), manager_cfg.clone())
                .await
                .map_err(|e| SinkError::Retriable(format!("redis {}: cannot connect: {e}", redact(&cfg.url))))?;
            lanes.push(conn);
        }
        let tombstone = cfg.tombstone_ttl.as_secs().max(1);
        let sink = RedisSink {
            lanes,
            client,
            url: redact(&cfg.url),
            pipelining_config,
            pipelining: None,
            stopped: PipelineStop::default(),
            in_flight: cfg.in_flight_batches.max(1),
            routes,
            script: Script::new(APPLY_LUA),
            prefix: cfg.version_prefix.clone(),
            tombstone_secs: tombstone.to_string(),
            records_per_call: cfg.records_per_call,
            lanes_plan: Lanes::new(cfg.connections),
        };
        sink.load_script(0).await?;
        if sink.routes.iter().any(|r| r.kind() == MappingKind::Json) {
            sink.check_json_module().await?;
        }
        info!(url = %redact(&cfg.url), connections = sink.lanes.len(), routes = sink.routes.len(), "redis sink connected");
        Ok(sink)
    }

    async fn load_script(&self, lane: usize) -> Result<(), SinkError> {
        let mut conn = self.lanes[lane].clone();
        let _: String = redis::cmd("SCRIPT").arg("LOAD").arg(APPLY_LUA).query_async(&mut conn).await.map_err(|e| request_failed(&e))?;
        Ok(())
    }

    async fn check_json_module(&self) -> Result<(), SinkError> {
        let mut conn = self.lanes[0].clone();
        let info: Value = redis::cmd("COMMAND").arg("INFO").arg("JSON.SET").query_async(&mut conn).await.map_err(|e| request_failed(&e))?;
        let present = matches!(&info, Value::Array(items) if items.iter().any(|v| !matches!(v, Value::Nil)));
        if present {
            Ok(())
        } else {
            Err(SinkError::Permanent(
                "redis: a pipeline maps rows with `type: json`, but this server has no RedisJSON module (JSON.SET is an unknown \
                 command). Load it (loadmodule /path/to/librejson.so, or use Redis Stack / Redis 8), or use `type: string` to store \
                 rows as JSON text"
                    .into(),
            ))
        }
    }

    /// Encodes a batch: the records to write, with their batch index, and
    /// those refused already (no mapping, a template that cannot render).
    fn encode_batch<'b>(&self, batch: &'b [SinkRecord]) -> (Vec<(usize, Encoded<'b>)>, Vec<Rejected>) {
        let mut rejected = Vec::new();
        let mut encoded = Vec::with_capacity(batch.len());
        let mut truncates = 0usize;
        for (index, record) in batch.iter().enumerate() {
            let Some(mapping) = self.routes.get(record.route) else {
                rejected.push(Rejected { index, error: format!("redis sink has no mapping for route {}", record.route) });
                continue;
            };
            match encode(mapping, &record.change) {
                Ok(enc) if enc.ops.is_empty() => truncates += 1,
                Ok(enc) => encoded.push((index, enc)),
                Err(error) => rejected.push(Rejected { index, error: format!("redis {} mapping: {error}", mapping.kind().as_str()) }),
            }
        }
        if truncates > 0 {
            warn!(count = truncates, "TRUNCATE is not applied to redis keys (only stream mappings record it); delete the keys yourself");
        }
        (encoded, rejected)
    }

    /// Splits the encoded records into lanes ([`Lanes`]) and builds each
    /// lane's pipeline; with `load_script` it starts with `SCRIPT LOAD`
    /// (reply ignored), so its calls cannot meet a server without the
    /// script. The guard is to be dropped once the batch is acknowledged.
    fn plan(&mut self, encoded: &[(usize, Encoded<'_>)], load_script: bool) -> (Vec<LaneWork>, Option<BatchGuard>) {
        let n = self.lanes.len();
        let (lanes, guard) = self.lanes_plan.assign(encoded);
        let mut per_lane: Vec<Vec<&(usize, Encoded<'_>)>> = vec![Vec::new(); n];
        for (item, lane) in encoded.iter().zip(lanes) {
            per_lane[lane].push(item);
        }
        let mut work = Vec::new();
        for (lane, items) in per_lane.into_iter().enumerate() {
            if items.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            if load_script {
                pipe.cmd("SCRIPT").arg("LOAD").arg(APPLY_LUA).ignore();
            }
            let mut op_records = Vec::new();
            for call in items.chunks(self.records_per_call) {
                // Sized up front: growing a call of hundreds of records by
                // doubling copied it several times (memmove was 11% of a
                // profile of the sink).
                let (mut args, mut bytes) = (5, 64 + self.prefix.len());
                for (_, enc) in call {
                    for op in &enc.ops {
                        args += 6 + op.args.len();
                        bytes += 48 + op.key.len() + op.sub.len() + op.version.len() + op.args.iter().map(|a| a.len()).sum::<usize>();
                    }
                }
                let mut cmd = Cmd::with_capacity(args, bytes);
                cmd.arg("EVALSHA").arg(self.script.get_hash()).arg(0).arg(&self.prefix).arg(&self.tombstone_secs);
                let mut records = Vec::new();
                for (index, enc) in call {
                    for op in &enc.ops {
                        cmd.arg(op.code).arg(&op.key).arg(&op.sub).arg(&op.version).arg(op.ttl_secs).arg(op.args.len());
                        for a in &op.args {
                            cmd.arg(&**a);
                        }
                        records.push(*index);
                    }
                }
                pipe.add_command(cmd);
                op_records.push(records);
            }
            work.push(LaneWork { lane, pipe, op_records });
        }
        (work, guard)
    }

    /// Runs one lane's pipeline; reloads the script once if the server lost
    /// it (restart, SCRIPT FLUSH). Returns one reply per call.
    async fn run_lane(&self, work: &LaneWork) -> Result<Vec<Value>, SinkError> {
        let mut conn = self.lanes[work.lane].clone();
        for attempt in 0..2 {
            let calls = script_calls(work.pipe.query_async(&mut conn).await)?;
            let lost_script = calls.iter().any(|c| matches!(c, Value::ServerError(e) if e.code() == "NOSCRIPT"));
            if lost_script && attempt == 0 {
                info!(lane = work.lane, "redis lost the apply script (restart or flush); loading it again");
                self.load_script(work.lane).await?;
                continue;
            }
            return Ok(calls);
        }
        Err(SinkError::Retriable("redis: the apply script keeps disappearing (NOSCRIPT)".into()))
    }

    /// The pipelining connections, opened if need be (all of them before
    /// anything is sent on one).
    async fn pipelining(&mut self) -> Result<&[MultiplexedConnection], SinkError> {
        if self.pipelining.is_none() {
            let mut conns = Vec::with_capacity(self.lanes.len());
            for _ in 0..self.lanes.len() {
                let conn = self
                    .client
                    .get_multiplexed_async_connection_with_config(&self.pipelining_config)
                    .await
                    .map_err(|e| SinkError::Retriable(format!("redis {}: cannot connect: {e}", self.url)))?;
                conns.push(conn);
            }
            self.pipelining = Some(conns);
        }
        Ok(self.pipelining.as_deref().unwrap_or_default())
    }
}

/// The replies of a lane pipeline's script calls, one per call.
fn script_calls(reply: RedisResult<Value>) -> Result<Vec<Value>, SinkError> {
    match reply.map_err(|e| request_failed(&e))? {
        Value::Array(calls) => Ok(calls),
        other => Err(SinkError::Retriable(format!("redis: unexpected pipeline reply {other:?}"))),
    }
}

/// Sends a pipeline on a pipelining connection: the first poll hands it to
/// the connection's writer (in call order, which is the order Redis runs
/// them in); the returned future resolves with the reply.
async fn send(conn: &MultiplexedConnection, pipe: Pipeline) -> Sent {
    let mut conn = conn.clone();
    let mut sent: Sent = Box::pin(async move { pipe.query_async::<Value>(&mut conn).await });
    match std::future::poll_fn(|cx| Poll::Ready(sent.as_mut().poll(cx))).await {
        Poll::Ready(reply) => Box::pin(std::future::ready(reply)),
        Poll::Pending => sent,
    }
}

/// Reads a batch's replies, lane by lane: `Ok(rejected)` once every
/// operation is acknowledged (applied, stale, or refused for this record
/// alone); the first failure of a lane or a call is the batch's error.
fn read_outcome(lanes: Vec<LaneReplies>, mut rejected: Vec<Rejected>, records: usize) -> BatchOutcome {
    let (mut applied, mut stale) = (0usize, 0usize);
    for (op_records, reply) in lanes {
        let calls = reply?;
        if calls.len() != op_records.len() {
            return Err(SinkError::Retriable(format!("redis: {} replies for {} script calls", calls.len(), op_records.len())));
        }
        for (call, records) in calls.into_iter().zip(&op_records) {
            let statuses = match call {
                Value::Array(s) => s,
                Value::ServerError(e) if is_transient_reply(e.code()) => {
                    return Err(SinkError::Retriable(format!("redis: {}", e.details().unwrap_or(e.code()))))
                }
                Value::ServerError(e) => {
                    return Err(SinkError::Permanent(format!("redis apply script failed: {} {}", e.code(), e.details().unwrap_or(""))))
                }
                other => return Err(SinkError::Retriable(format!("redis: unexpected script reply {other:?}"))),
            };
            if statuses.len() != records.len() {
                return Err(SinkError::Retriable(format!("redis: {} results for {} operations", statuses.len(), records.len())));
            }
            for (status, &index) in statuses.into_iter().zip(records) {
                match status {
                    Value::Int(1) => applied += 1,
                    Value::Int(_) => stale += 1,
                    Value::BulkString(text) => {
                        let text = String::from_utf8_lossy(&text).into_owned();
                        if is_transient_reply(&text) {
                            return Err(SinkError::Retriable(format!("redis: {text}")));
                        }
                        if rejected.last().is_none_or(|r: &Rejected| r.index != index) {
                            rejected.push(Rejected { index, error: format!("redis: {text}") });
                        }
                    }
                    other => return Err(SinkError::Retriable(format!("redis: unexpected operation result {other:?}"))),
                }
            }
        }
    }
    rejected.sort_by_key(|r| r.index);
    rejected.dedup_by_key(|r| r.index);
    debug!(records, applied, stale, rejected = rejected.len(), "redis batch written");
    Ok(rejected)
}

/// Builds the client: URL, ACL credentials, database, TLS.
pub(crate) fn build_client(cfg: &RedisSinkConfig) -> Result<Client, SinkError> {
    let mut url = cfg.url.clone();
    if cfg.is_tls() && cfg.tls.insecure && !url.contains('#') {
        url.push_str("#insecure");
    }
    let bad_url = |e: redis::RedisError| SinkError::Permanent(format!("redis sink url {:?}: {e}", redact(&cfg.url)));
    let mut info = url.as_str().into_connection_info().map_err(bad_url)?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &cfg.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &cfg.password {
        settings = settings.set_password(password.expose());
    }
    info = info.set_redis_settings(settings);
    let tls = &cfg.tls;
    if cfg.is_tls() && (tls.ca_file.is_some() || tls.cert_file.is_some()) {
        let read = |p: &std::path::Path| TlsFiles::read(p).map_err(|e| SinkError::Permanent(format!("redis sink tls: {e}")));
        let root_cert = tls.ca_file.as_deref().map(read).transpose()?;
        let client_tls = match (&tls.cert_file, &tls.key_file) {
            (Some(c), Some(k)) => Some(redis::ClientTlsConfig { client_cert: read(c)?, client_key: read(k)? }),
            _ => None,
        };
        Client::build_with_tls(info, redis::TlsCertificates { client_tls, root_cert }).map_err(bad_url)
    } else {
        Client::open(info).map_err(bad_url)
    }
}

impl Sink for RedisSink {
    /// Applies the batch. `Ok(rejected)`: every other record is acknowledged
    /// by Redis (applied, or skipped because Redis holds a newer version).
    /// `Err(Retriable)`: some records may be applied; retrying converges.
    async fn write(&mut self, batch: &[SinkRecord]) -> BatchOutcome {
        let (encoded, rejected) = self.encode_batch(batch);
        let (work, _guard) = self.plan(&encoded, false);
        let replies = join_all(work.iter().map(|w| self.run_lane(w))).await;
        let lanes = work.into_iter().zip(replies).map(|(w, reply)| (w.op_records, reply)).collect();
        read_outcome(lanes, rejected, batch.len())
    }

    fn max_in_flight(&self) -> usize {
        self.in_flight
    }

    /// Sends the batch's lane pipelines; see the module docs for the order
    /// and failure rules.
    async fn submit(&mut self, batch: Arc<[SinkRecord]>) -> Result<InFlight, SinkError> {
        if let Some(refused) = self.stopped.refusal("redis") {
            // The next submit opens the pipelining connections afresh.
            self.pipelining = None;
            return Err(refused);
        }
        let (encoded, rejected) = self.encode_batch(&batch);
        let (work, guard) = self.plan(&encoded, true);
        let conns = self.pipelining().await?;
        let mut sent = Vec::with_capacity(work.len());
        for w in work {
            sent.push((w.op_records, send(&conns[w.lane], w.pipe).await));
        }
        let (stopped, records) = (self.stopped.clone(), batch.len());
        Ok(Box::pin(async move {
            let (op_records, replies): (Vec<_>, Vec<_>) = sent.into_iter().unzip();
            let replies = join_all(replies).await;
            let lanes = op_records.into_iter().zip(replies.into_iter().map(script_calls)).collect();
            let outcome = read_outcome(lanes, rejected, records);
            if outcome.is_err() {
                stopped.set();
            }
            drop(guard);
            outcome
        }))
    }

    async fn check(&mut self) -> Result<(), SinkError> {
        let mut conn = self.lanes[0].clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await.map_err(|e| request_failed(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(resp: &str) -> Value {
        redis::parse_redis_value(resp.as_bytes()).expect("RESP")
    }

    /// Two calls of two operations each: records 0 and 1, then 1 and 2.
    fn lanes(calls: Vec<Value>) -> Vec<LaneReplies> {
        vec![(vec![vec![0, 1], vec![1, 2]], Ok(calls))]
    }

    #[test]
    fn every_operation_acknowledged_is_ok_and_a_refused_record_is_rejected_once() {
        let ok = reply("*2\r\n:1\r\n:0\r\n");
        let refused = reply("*2\r\n$9\r\nWRONGTYPE\r\n:1\r\n");
        assert_eq!(read_outcome(lanes(vec![ok.clone(), ok.clone()]), vec![], 3), Ok(vec![]));
        let rejected = read_outcome(lanes(vec![ok, refused]), vec![Rejected { index: 2, error: "template".into() }], 3).unwrap();
        let indexes: Vec<usize> = rejected.iter().map(|r| r.index).collect();
        assert_eq!(indexes, [1, 2]);
        assert_eq!(rejected[0].error, "redis: WRONGTYPE");
    }

    #[test]
    fn a_transient_reply_or_a_lost_script_fails_the_batch_as_retriable() {
        let ok = reply("*2\r\n:1\r\n:1\r\n");
        for bad in [reply("-NOSCRIPT No matching script\r\n"), reply("-OOM command not allowed\r\n"), reply("*2\r\n:1\r\n$3\r\nOOM\r\n")] {
            let outcome = read_outcome(lanes(vec![ok.clone(), bad.clone()]), vec![], 3);
            assert!(matches!(outcome, Err(SinkError::Retriable(_))), "{bad:?}: {outcome:?}");
        }
        let outcome = read_outcome(vec![(vec![vec![0]], Err(SinkError::Retriable("connection lost".into())))], vec![], 1);
        assert_eq!(outcome, Err(SinkError::Retriable("connection lost".into())));
    }

    #[test]
    fn missing_replies_are_retried_and_a_broken_script_is_permanent() {
        let ok = reply("*2\r\n:1\r\n:1\r\n");
        assert!(matches!(read_outcome(lanes(vec![ok.clone()]), vec![], 3), Err(SinkError::Retriable(_))));
        let short = reply("*1\r\n:1\r\n");
        assert!(matches!(read_outcome(lanes(vec![ok.clone(), short]), vec![], 3), Err(SinkError::Retriable(_))));
        let broken = reply("-ERR user_script:1: Script attempted to access nonexistent global variable\r\n");
        assert!(matches!(read_outcome(lanes(vec![ok, broken]), vec![], 3), Err(SinkError::Permanent(_))));
    }

    fn enc(key: &str, from: Option<&str>) -> (usize, Encoded<'static>) {
        (0, Encoded { lane_key: key.into(), lane_from: from.map(String::from), ops: vec![] })
    }

    /// Two keys that hash to different lanes of `lanes`.
    fn two_lanes(lanes: &Lanes) -> (String, String, String) {
        let keys: Vec<String> = (0..100).map(|i| format!("k:{i}")).collect();
        let a = keys[0].clone();
        let b = keys.iter().find(|k| lanes.hashed(k) != lanes.hashed(&a)).unwrap().clone();
        let c = keys.iter().find(|k| lanes.hashed(k) != lanes.hashed(&a) && **k != b).unwrap().clone();
        (a, b, c)
    }

    #[test]
    fn a_moved_row_takes_the_old_keys_lane_and_the_new_key_follows_until_acknowledged() {
        let mut lanes = Lanes::new(2);
        let (old, new, next) = two_lanes(&lanes);
        let (lo, ln) = (lanes.hashed(&old), lanes.hashed(&new));
        assert_ne!(lo, ln);
        // Batch 1: a change of the old key, the move, then a partial change
        // of the new key: all in the old key's lane.
        let (got, g1) = lanes.assign(&[enc(&old, None), enc(&new, Some(&old)), enc(&new, None)]);
        assert_eq!(got, [lo, lo, lo]);
        // Batch 2, while batch 1 is in flight: the new key still follows,
        // and a chain of moves (new -> next) too.
        let (got, g2) = lanes.assign(&[enc(&new, None), enc(&next, Some(&new)), enc(&next, None)]);
        assert_eq!(got, [lo, lo, lo]);
        // Batch 1 acknowledged, batch 2 not: batch 2 used the redirects.
        drop(g1);
        let (got, g3) = lanes.assign(&[enc(&new, None)]);
        assert_eq!(got, [lo]);
        drop(g2);
        drop(g3);
        // Everything acknowledged: each key is back in its own lane.
        let (got, _g4) = lanes.assign(&[enc(&new, None), enc(&next, None), enc(&old, None)]);
        assert_eq!(got, [ln, lanes.hashed(&next), lo]);
        assert!(lanes.redirects.is_empty());
        // One connection: one lane, nothing tracked.
        let mut one = Lanes::new(1);
        assert_eq!(one.assign(&[enc(&new, Some(&old))]).0, [0]);
    }

    #[test]
    fn a_pipeline_reply_that_is_not_an_array_is_retriable() {
        assert!(matches!(script_calls(Ok(Value::Okay)), Err(SinkError::Retriable(_))));
        assert_eq!(script_calls(Ok(reply("*1\r\n:1\r\n"))), Ok(vec![Value::Int(1)]));
    }
}
