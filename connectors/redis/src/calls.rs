//! A batch's encoded records as pipelines of `apply.lua` calls, one pipeline
//! per lane.
//!
//! Each lane sends one pipeline of `EVALSHA` calls per batch, each applying
//! up to `records_per_call` records (`code key sub version ttl nargs
//! args...` per operation, after the version prefix and the tombstone TTL).
//! A pipeline may start with `SCRIPT LOAD` of the script (a cache hit in
//! Redis), so its calls cannot meet a server that lost the script.

use redis::{Cmd, Pipeline, Script};

use crate::encode::Encoded;
use crate::lanes::{BatchGuard, Lanes};

/// The server-side script every write goes through.
pub(crate) const APPLY_LUA: &str = include_str!("apply.lua");

/// The script calls of one lane: the pipeline, and for each call the batch
/// index of each of its operations.
pub(crate) struct LaneWork {
    pub(crate) lane: usize,
    pub(crate) pipe: Pipeline,
    pub(crate) op_records: Vec<Vec<usize>>,
}

/// How the calls of a sink are built: the script, and the arguments every
/// call starts with.
pub(crate) struct Calls {
    pub(crate) script: Script,
    pub(crate) prefix: String,
    pub(crate) tombstone_secs: String,
    pub(crate) records_per_call: usize,
}

impl Calls {
    /// Splits the encoded records into lanes ([`Lanes`]) and builds each
    /// lane's pipeline; with `load_script` it starts with `SCRIPT LOAD`
    /// (reply ignored). The guard is to be dropped once the batch is
    /// acknowledged.
    pub(crate) fn plan(
        &self,
        lanes: &mut Lanes,
        encoded: &[(usize, Encoded<'_>)],
        load_script: bool,
    ) -> (Vec<LaneWork>, Option<BatchGuard>) {
        let (assigned, guard) = lanes.assign(encoded);
        let mut per_lane: Vec<Vec<&(usize, Encoded<'_>)>> = vec![Vec::new(); lanes.count()];
        for (item, lane) in encoded.iter().zip(assigned) {
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
                let (cmd, records) = self.call(call);
                pipe.add_command(cmd);
                op_records.push(records);
            }
            work.push(LaneWork { lane, pipe, op_records });
        }
        (work, guard)
    }

    /// One `EVALSHA` call of `records`, and the batch index of each of its
    /// operations.
    fn call(&self, records: &[&(usize, Encoded<'_>)]) -> (Cmd, Vec<usize>) {
        // Sized up front: growing a call of hundreds of records by
        // doubling copied it several times (memmove was 11% of a
        // profile of the sink).
        let (mut args, mut bytes) = (5, 64 + self.prefix.len());
        for (_, enc) in records {
            for op in &enc.ops {
                args += 6 + op.args.len();
                bytes += 48 + op.key.len() + op.sub.len() + op.version.len() + op.args.iter().map(|a| a.len()).sum::<usize>();
            }
        }
        let mut cmd = Cmd::with_capacity(args, bytes);
        cmd.arg("EVALSHA").arg(self.script.get_hash()).arg(0).arg(&self.prefix).arg(&self.tombstone_secs);
        let mut indexes = Vec::new();
        for (index, enc) in records {
            for op in &enc.ops {
                cmd.arg(op.code).arg(&op.key).arg(&op.sub).arg(&op.version).arg(op.ttl_secs).arg(op.args.len());
                for a in &op.args {
                    cmd.arg(&**a);
                }
                indexes.push(*index);
            }
        }
        (cmd, indexes)
    }
}
