//! The Debezium PostgreSQL connector's change event value, so consumers
//! written for Debezium can read pgfanout's topics unchanged.
//!
//! This is the envelope as Kafka Connect's JsonConverter writes it with
//! `schemas.enable=false` (the `payload` part only), with the fields of the
//! Debezium documentation's PostgreSQL create/update/delete examples:
//!
//! ```json
//! {"before":{"id":1},"after":{"id":1,"first_name":"Anne Marie"},
//!  "source":{"version":"…","connector":"postgresql","name":"PostgreSQL_server",
//!            "ts_ms":1559033904863,"ts_us":1559033904863769,"ts_ns":1559033904863769000,
//!            "snapshot":"false","db":"postgres","sequence":"[\"24023119\",\"24023128\"]",
//!            "schema":"public","table":"customers","txId":556,"lsn":24023128,"xmin":null},
//!  "op":"u","ts_ms":1465584025523,"ts_us":1465584025523514,"ts_ns":1465584025523514000,
//!  "transaction":null}
//! ```
//!
//! Choices where pgfanout's record and Debezium's differ:
//! - `before`: the old row when PostgreSQL sent one, else (update, delete)
//!   the key columns, as in the documented update example under the default
//!   replica identity.
//! - `snapshot` is the string `"true"` / `"false"`, as the real connector
//!   writes it (its schema is an enum string; the documentation's examples
//!   show a boolean).
//! - `sequence` is `["<commit_lsn>","<lsn>"]` as decimal strings: Debezium's
//!   first element is the last commit LSN it processed; pgfanout writes its
//!   own ordering version (the transaction's commit LSN) there, which orders
//!   events the same way.
//! - Column values are PostgreSQL's `to_jsonb()` JSON (exact numerics as
//!   numbers, timestamps as ISO text), not Debezium's Connect encodings
//!   (base64 decimals, epoch integers).
//! - Truncate events carry `source`, `op: "t"` and the timestamps only
//!   (and, like Debezium's, no key).
//! - Unchanged TOASTed columns are absent from `after` (Debezium writes the
//!   placeholder `__debezium_unavailable_value`); pgfanout never invents a
//!   value for them.

use std::time::{SystemTime, UNIX_EPOCH};

use pgfanout_sdk::json::write_str;
use pgfanout_sdk::{Change, Op};

use crate::config::DebeziumConfig;

/// Debezium's one-letter operation code.
pub fn op_code(op: Op) -> &'static str {
    match op {
        Op::Insert => "c",
        Op::Update => "u",
        Op::Delete => "d",
        Op::Read => "r",
        Op::Truncate => "t",
        Op::Message => "m",
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Appends the envelope of `change` to `out`. `now_us` is the processing
/// time written as the top-level `ts_*` (and as `source.ts_*` for snapshot
/// rows, which have no commit time).
pub fn write_envelope(out: &mut Vec<u8>, change: &Change, cfg: &DebeziumConfig, now_us: i64) {
    let truncate = change.op == Op::Truncate;
    out.push(b'{');
    if change.op == Op::Message {
        // Debezium's logical decoding message: no before/after, the
        // prefix and the content (bytes, base64) under `message`.
        use base64::Engine as _;
        out.extend_from_slice(b"\"message\":{\"prefix\":");
        write_str(out, &change.table);
        out.extend_from_slice(b",\"content\":");
        let content = change.after.as_ref().and_then(|a| a.get("content")).map(pgfanout_sdk::message_content).unwrap_or_default();
        write_str(out, &base64::engine::general_purpose::STANDARD.encode(content));
        out.extend_from_slice(b"},");
    } else if !truncate {
        out.extend_from_slice(b"\"before\":");
        let before = match change.op {
            Op::Update | Op::Delete => change.before.as_ref().or(change.key.as_ref()),
            _ => change.before.as_ref(),
        };
        match before {
            Some(row) => row.write_json(out),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"after\":");
        match &change.after {
            Some(row) => row.write_json(out),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b',');
    }
    let source_us = change.commit_ts.unwrap_or(now_us);
    out.extend_from_slice(b"\"source\":{\"version\":");
    write_str(out, &cfg.version);
    out.extend_from_slice(b",\"connector\":\"postgresql\",\"name\":");
    write_str(out, &cfg.server_name);
    timestamps(out, source_us);
    out.extend_from_slice(if change.op == Op::Read { b",\"snapshot\":\"true\"" } else { b",\"snapshot\":\"false\"" });
    out.extend_from_slice(b",\"db\":");
    write_str(out, &cfg.database);
    out.extend_from_slice(b",\"sequence\":");
    write_str(out, &format!("[\"{}\",\"{}\"]", change.commit_lsn.0, change.lsn.0));
    out.extend_from_slice(b",\"schema\":");
    write_str(out, &change.schema);
    out.extend_from_slice(b",\"table\":");
    write_str(out, &change.table);
    out.extend_from_slice(b",\"txId\":");
    match change.xid {
        Some(x) => num(out, i64::from(x)),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"lsn\":");
    out.extend_from_slice(change.lsn.0.to_string().as_bytes());
    out.extend_from_slice(b",\"xmin\":null},\"op\":\"");
    out.extend_from_slice(op_code(change.op).as_bytes());
    out.push(b'"');
    timestamps(out, now_us);
    out.extend_from_slice(b",\"transaction\":null}");
}

fn num(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(n.to_string().as_bytes());
}

/// `,"ts_ms":…,"ts_us":…,"ts_ns":…` of a time in microseconds since the
/// Unix epoch (Debezium gives each time in the three units).
fn timestamps(out: &mut Vec<u8>, us: i64) {
    out.extend_from_slice(b",\"ts_ms\":");
    num(out, us.div_euclid(1000));
    out.extend_from_slice(b",\"ts_us\":");
    num(out, us);
    out.extend_from_slice(b",\"ts_ns\":");
    num(out, us.saturating_mul(1000));
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfanout_sdk::{Lsn, Row, Value};

    fn update() -> Change {
        Change {
            op: Op::Update,
            schema: "public".into(),
            table: "customers".into(),
            key: Some(Row(vec![("id".into(), Value::Number("1".into()))])),
            before: None,
            after: Some(Row(vec![
                ("id".into(), Value::Number("1".into())),
                ("first_name".into(), Value::String("Anne Marie".into())),
                ("last_name".into(), Value::String("Kretchmar".into())),
                ("email".into(), Value::String("annek@noanswer.org".into())),
            ])),
            unchanged_toast: vec![],
            lsn: Lsn(24023128),
            commit_lsn: Lsn(24023200),
            ordinal: 0,
            xid: Some(556),
            commit_ts: Some(1_559_033_904_863_769),
        }
    }

    fn render(c: &Change) -> serde_json::Value {
        let mut out = Vec::new();
        let cfg = DebeziumConfig { server_name: "PostgreSQL_server".into(), database: "postgres".into(), version: "2.7.0.Final".into() };
        write_envelope(&mut out, c, &cfg, 1_465_584_025_523_514);
        serde_json::from_slice(&out).unwrap()
    }

    /// Field by field against the Debezium documentation's PostgreSQL update
    /// event example (debezium.io, PostgreSQL connector, "update events").
    #[test]
    fn update_matches_the_documented_example() {
        let v = render(&update());
        let expected = serde_json::json!({
            "before": {"id": 1},
            "after": {"id": 1, "first_name": "Anne Marie", "last_name": "Kretchmar", "email": "annek@noanswer.org"},
            "source": {
                "version": "2.7.0.Final", "connector": "postgresql", "name": "PostgreSQL_server",
                "ts_ms": 1559033904863_i64, "ts_us": 1559033904863769_i64, "ts_ns": 1559033904863769000_i64,
                "snapshot": "false", "db": "postgres", "sequence": "[\"24023200\",\"24023128\"]",
                "schema": "public", "table": "customers", "txId": 556, "lsn": 24023128, "xmin": null
            },
            "op": "u",
            "ts_ms": 1465584025523_i64, "ts_us": 1465584025523514_i64, "ts_ns": 1465584025523514000_i64,
            "transaction": null
        });
        for field in ["before", "after", "op", "ts_ms", "ts_us", "ts_ns", "transaction"] {
            assert_eq!(v[field], expected[field], "field {field}");
        }
        for field in [
            "version",
            "connector",
            "name",
            "ts_ms",
            "ts_us",
            "ts_ns",
            "snapshot",
            "db",
            "sequence",
            "schema",
            "table",
            "txId",
            "lsn",
            "xmin",
        ] {
            assert_eq!(v["source"][field], expected["source"][field], "field source.{field}");
        }
        assert_eq!(v, expected, "no field beyond the documented ones");
    }

    #[test]
    fn ops_snapshot_and_truncate() {
        let mut c = update();
        c.op = Op::Delete;
        c.after = None;
        let v = render(&c);
        assert_eq!((v["op"].as_str(), &v["before"], &v["after"]), (Some("d"), &serde_json::json!({"id": 1}), &serde_json::Value::Null));

        let mut c = update();
        c.op = Op::Read;
        c.xid = None;
        c.commit_ts = None;
        let v = render(&c);
        assert_eq!(v["op"], "r");
        assert_eq!(v["source"]["snapshot"], "true");
        assert_eq!(v["source"]["txId"], serde_json::Value::Null);
        assert_eq!(v["source"]["ts_ms"], v["ts_ms"], "snapshot rows use the processing time");
        assert_eq!(v["before"], serde_json::Value::Null);

        let mut c = update();
        c.op = Op::Insert;
        assert_eq!(render(&c)["before"], serde_json::Value::Null, "inserts have no before");

        let mut c = update();
        c.op = Op::Truncate;
        c.key = None;
        c.after = None;
        let v = render(&c);
        assert_eq!(v["op"], "t");
        assert!(v.get("before").is_none() && v.get("after").is_none(), "{v}");
        assert_eq!(v["source"]["table"], "customers");
    }
}
