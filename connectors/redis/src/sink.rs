//! The Redis sink: a batch's path from records to acknowledged writes.
//!
//! A batch is encoded ([`encode`]: each record into versioned operations of
//! `apply.lua`), split into lanes ([`Lanes`]: one connection per lane, two
//! changes of one key always on the same lane, in order), built into one
//! pipeline of script calls per lane ([`Calls`]), sent, and its replies read
//! ([`read_outcome`]): a batch is done (`Ok`) only once Redis has
//! acknowledged every operation of it.
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
//!
//! The reconnecting lanes reconnect by themselves only when their
//! connection is dropped. A request that timed out leaves it open, and its
//! reply may never come or come cut: a link that dropped bytes (a silent
//! half-open TCP path) leaves the connection's replies out of step with its
//! requests for good. So a lane whose request timed out, failed on I/O or
//! got a reply of the wrong shape is replaced by a fresh connection before
//! its next use ([`RedisSink::renew_lanes`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::future::join_all;
use pgfanout_sdk::connector::compile_routes;
use pgfanout_sdk::{BatchOutcome, InFlight, PipelineStop, Rejected, Sink, SinkError, SinkRecord};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Pipeline, RedisResult, Script, Value};
use tracing::{info, warn};

use crate::calls::{Calls, LaneWork, APPLY_LUA};
use crate::client::build_client;
use crate::config::{redact, MappingKind, RedisMapping, RedisSinkConfig};
use crate::encode::{encode, CompiledMapping, Encoded};
use crate::error::RedisSinkError;
use crate::lanes::Lanes;
use crate::reply::{read_outcome, script_calls};

/// A connected Redis sink; see the crate docs for the mappings.
pub struct RedisSink {
    /// One reconnecting connection per lane, for [`Sink::write`].
    lanes: Vec<ConnectionManager>,
    /// Lanes to replace before their next use (see the module docs).
    suspect: Vec<bool>,
    manager_cfg: ConnectionManagerConfig,
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
    calls: Calls,
    lanes_plan: Lanes,
}

/// A lane pipeline sent on a pipelining connection, awaiting its reply.
type Sent = Pin<Box<dyn Future<Output = RedisResult<Value>> + Send>>;

impl RedisSink {
    /// Connects every lane (ConnectionManager, reconnecting on its own),
    /// loads the apply script, and checks that RedisJSON is present when a
    /// route uses `type: json`. `routes[i]` is the mapping of route `i`
    /// ([`SinkRecord::route`]). An invalid config or mapping, or a missing
    /// module, is permanent ([`RedisSinkError::is_retriable`] false); an unreachable server is
    /// retriable.
    pub async fn connect(cfg: &RedisSinkConfig, routes: Vec<RedisMapping>) -> Result<RedisSink, RedisSinkError> {
        let routes = compile_routes("redis", cfg.validate(), &routes, CompiledMapping::compile).map_err(RedisSinkError::Invalid)?;
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
                .map_err(|source| RedisSinkError::Connect { url: redact(&cfg.url), source })?;
            lanes.push(conn);
        }
        let tombstone = cfg.tombstone_ttl.as_secs().max(1);
        let sink = RedisSink {
            suspect: vec![false; lanes.len()],
            lanes,
            manager_cfg,
            client,
            url: redact(&cfg.url),
            pipelining_config,
            pipelining: None,
            stopped: PipelineStop::default(),
            in_flight: cfg.in_flight_batches.max(1),
            routes,
            calls: Calls {
                script: Script::new(APPLY_LUA),
                prefix: cfg.version_prefix.clone(),
                tombstone_secs: tombstone.to_string(),
                records_per_call: cfg.records_per_call,
            },
            lanes_plan: Lanes::new(cfg.connections),
        };
        sink.load_script(0).await?;
        if sink.routes.iter().any(|r| r.kind() == MappingKind::Json) {
            sink.check_json_module().await?;
        }
        info!(url = %redact(&cfg.url), connections = sink.lanes.len(), routes = sink.routes.len(), "redis sink connected");
        Ok(sink)
    }

    /// Replaces every suspect lane by a fresh connection; an unreachable
    /// server is a retriable error and the lane stays suspect.
    async fn renew_lanes(&mut self) -> Result<(), RedisSinkError> {
        for lane in 0..self.lanes.len() {
            if !self.suspect[lane] {
                continue;
            }
            let conn = ConnectionManager::new_with_config(self.client.clone(), self.manager_cfg.clone())
                .await
                .map_err(|source| RedisSinkError::Connect { url: self.url.clone(), source })?;
            info!(lane, "redis lane replaced by a fresh connection after a timed-out or broken request");
            self.lanes[lane] = conn;
            self.suspect[lane] = false;
        }
        Ok(())
    }

    async fn load_script(&self, lane: usize) -> Result<(), RedisSinkError> {
        let mut conn = self.lanes[lane].clone();
        let _: String = redis::cmd("SCRIPT").arg("LOAD").arg(APPLY_LUA).query_async(&mut conn).await.map_err(RedisSinkError::request)?;
        Ok(())
    }

    async fn check_json_module(&self) -> Result<(), RedisSinkError> {
        let mut conn = self.lanes[0].clone();
        let info: Value =
            redis::cmd("COMMAND").arg("INFO").arg("JSON.SET").query_async(&mut conn).await.map_err(RedisSinkError::request)?;
        let present = matches!(&info, Value::Array(items) if items.iter().any(|v| !matches!(v, Value::Nil)));
        if present {
            Ok(())
        } else {
            Err(RedisSinkError::NoJsonModule)
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

    /// Runs one lane's pipeline; reloads the script once if the server lost
    /// it (restart, SCRIPT FLUSH). Returns one reply per call.
    async fn run_lane(&self, work: &LaneWork) -> Result<Vec<Value>, RedisSinkError> {
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
        Err(RedisSinkError::ScriptLost)
    }

    /// The pipelining connections, opened if need be (all of them before
    /// anything is sent on one).
    async fn pipelining(&mut self) -> Result<&[MultiplexedConnection], RedisSinkError> {
        if self.pipelining.is_none() {
            let mut conns = Vec::with_capacity(self.lanes.len());
            for _ in 0..self.lanes.len() {
                let conn = self
                    .client
                    .get_multiplexed_async_connection_with_config(&self.pipelining_config)
                    .await
                    .map_err(|source| RedisSinkError::Connect { url: self.url.clone(), source })?;
                conns.push(conn);
            }
            self.pipelining = Some(conns);
        }
        Ok(self.pipelining.as_deref().unwrap_or_default())
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

impl Sink for RedisSink {
    /// Applies the batch. `Ok(rejected)`: every other record is acknowledged
    /// by Redis (applied, or skipped because Redis holds a newer version).
    /// `Err(Retriable)`: some records may be applied; retrying converges.
    async fn write(&mut self, batch: &[SinkRecord]) -> BatchOutcome {
        self.renew_lanes().await?;
        let (encoded, rejected) = self.encode_batch(batch);
        let (work, _guard) = self.calls.plan(&mut self.lanes_plan, &encoded, false);
        let replies = join_all(work.iter().map(|w| self.run_lane(w))).await;
        for (w, reply) in work.iter().zip(&replies) {
            if reply.as_ref().is_err_and(RedisSinkError::leaves_connection_suspect) {
                self.suspect[w.lane] = true;
            }
        }
        let lanes = work.into_iter().zip(replies).map(|(w, reply)| (w.op_records, reply)).collect();
        Ok(read_outcome(lanes, rejected, batch.len())?)
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
        let (work, guard) = self.calls.plan(&mut self.lanes_plan, &encoded, true);
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
            Ok(outcome?)
        }))
    }

    async fn check(&mut self) -> Result<(), SinkError> {
        self.renew_lanes().await?;
        let mut conn = self.lanes[0].clone();
        let pong = redis::cmd("PING").query_async::<String>(&mut conn).await.map_err(RedisSinkError::request);
        if pong.as_ref().is_err_and(RedisSinkError::leaves_connection_suspect) {
            self.suspect[0] = true;
        }
        pong?;
        Ok(())
    }
}
