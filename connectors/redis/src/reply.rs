//! Reading a batch's replies: what Redis acknowledged, which records it
//! refused alone, and which failures fail the whole batch.
//!
//! Each script call answers with one status per operation: `1` applied, `0`
//! skipped (Redis holds a newer version), or an error text. An error text of
//! a transient server condition (OOM, READONLY...) fails the batch as
//! retriable; any other one refuses that record alone (it is rejected and
//! dead-lettered by the runtime). A call answered with an error reply, or a
//! reply of an unexpected shape, fails the batch ([`RedisSinkError`] says
//! whether retrying helps).

use pgfanout_sdk::Rejected;
use redis::{RedisResult, Value};
use tracing::debug;

use crate::error::{is_transient_reply, RedisSinkError};

/// A lane's replies: for each script call the batch index of each of its
/// operations, and the calls' replies (or why there are none).
pub(crate) type LaneReplies = (Vec<Vec<usize>>, Result<Vec<Value>, RedisSinkError>);

/// The replies of a lane pipeline's script calls, one per call.
pub(crate) fn script_calls(reply: RedisResult<Value>) -> Result<Vec<Value>, RedisSinkError> {
    match reply.map_err(RedisSinkError::request)? {
        Value::Array(calls) => Ok(calls),
        other => Err(RedisSinkError::Unexpected(format!("unexpected pipeline reply {other:?}"))),
    }
}

/// Reads a batch's replies, lane by lane: `Ok(rejected)` once every
/// operation is acknowledged (applied, stale, or refused for this record
/// alone); the first failure of a lane or a call is the batch's error.
pub(crate) fn read_outcome(lanes: Vec<LaneReplies>, mut rejected: Vec<Rejected>, records: usize) -> Result<Vec<Rejected>, RedisSinkError> {
    let (mut applied, mut stale) = (0usize, 0usize);
    for (op_records, reply) in lanes {
        let calls = reply?;
        if calls.len() != op_records.len() {
            return Err(RedisSinkError::Unexpected(format!("{} replies for {} script calls", calls.len(), op_records.len())));
        }
        for (call, records) in calls.into_iter().zip(&op_records) {
            let statuses = match call {
                Value::Array(s) => s,
                Value::ServerError(e) => {
                    return Err(RedisSinkError::ScriptFailed { code: e.code().to_string(), detail: e.details().map(str::to_string) })
                }
                other => return Err(RedisSinkError::Unexpected(format!("unexpected script reply {other:?}"))),
            };
            if statuses.len() != records.len() {
                return Err(RedisSinkError::Unexpected(format!("{} results for {} operations", statuses.len(), records.len())));
            }
            for (status, &index) in statuses.into_iter().zip(records) {
                match status {
                    Value::Int(1) => applied += 1,
                    Value::Int(_) => stale += 1,
                    Value::BulkString(text) => {
                        let text = String::from_utf8_lossy(&text).into_owned();
                        if is_transient_reply(&text) {
                            return Err(RedisSinkError::Operation { text });
                        }
                        if rejected.last().is_none_or(|r: &Rejected| r.index != index) {
                            rejected.push(Rejected { index, error: format!("redis: {text}") });
                        }
                    }
                    other => return Err(RedisSinkError::Unexpected(format!("unexpected operation result {other:?}"))),
                }
            }
        }
    }
    rejected.sort_by_key(|r| r.index);
    rejected.dedup_by_key(|r| r.index);
    debug!(records, applied, stale, rejected = rejected.len(), "redis batch written");
    Ok(rejected)
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

    fn retriable(outcome: Result<Vec<Rejected>, RedisSinkError>) -> bool {
        outcome.is_err_and(|e| e.is_retriable())
    }

    #[test]
    fn every_operation_acknowledged_is_ok_and_a_refused_record_is_rejected_once() {
        let ok = reply("*2\r\n:1\r\n:0\r\n");
        let refused = reply("*2\r\n$9\r\nWRONGTYPE\r\n:1\r\n");
        assert_eq!(read_outcome(lanes(vec![ok.clone(), ok.clone()]), vec![], 3).unwrap(), vec![]);
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
            assert!(retriable(outcome), "{bad:?}");
        }
        let outcome = read_outcome(vec![(vec![vec![0]], Err(RedisSinkError::ScriptLost))], vec![], 1);
        assert!(matches!(outcome, Err(RedisSinkError::ScriptLost)));
    }

    #[test]
    fn missing_replies_are_retried_and_a_broken_script_is_permanent() {
        let ok = reply("*2\r\n:1\r\n:1\r\n");
        assert!(retriable(read_outcome(lanes(vec![ok.clone()]), vec![], 3)));
        let short = reply("*1\r\n:1\r\n");
        assert!(retriable(read_outcome(lanes(vec![ok.clone(), short]), vec![], 3)));
        let broken = reply("-ERR user_script:1: Script attempted to access nonexistent global variable\r\n");
        let outcome = read_outcome(lanes(vec![ok, broken]), vec![], 3);
        assert!(outcome.as_ref().is_err_and(|e| !e.is_retriable() && e.code() == Some("ERR")), "{outcome:?}");
    }

    #[test]
    fn a_pipeline_reply_that_is_not_an_array_is_retriable() {
        assert!(script_calls(Ok(Value::Okay)).is_err_and(|e| e.is_retriable()));
        assert_eq!(script_calls(Ok(reply("*1\r\n:1\r\n"))).unwrap(), vec![Value::Int(1)]);
    }
}
