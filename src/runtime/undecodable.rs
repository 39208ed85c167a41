//! A row that cannot be decoded (a value the decoder refuses): what
//! `source.postgres.on_decode_error` does with it.

use std::sync::Arc;

use pgfanout_postgres::pgoutput::{self, LogicalMessage};
use pgfanout_postgres::relation::{raw_change, RelationInfo, TxMeta};
use pgfanout_postgres::SourceError;
use pgfanout_sdk::Lsn;
use tracing::warn;

use crate::config::OnDecodeError;
use crate::dead_letter::{DeadLetter, DeadLetters, Stage};
use crate::metrics as m;

/// A row that cannot be decoded: with `on_decode_error: dead_letter` it
/// goes to the dead-letter file with its table, position, raw text values
/// and the error, is counted, and the stream goes on (it counts as done
/// for the ack rule: it is durable in the dead-letter file before its
/// transaction's commit marker can be confirmed). With `stop`, pgfanout
/// exits 1 and the slot stays before the row.
#[allow(clippy::too_many_arguments)]
pub async fn dead_letter(
    on_decode_error: OnDecodeError,
    dead_letters: &DeadLetters,
    rel: &RelationInfo,
    msg: &LogicalMessage,
    lsn: Lsn,
    tx: &TxMeta,
    ordinal: u32,
    error: pgoutput::DecodeError,
) -> Result<(), SourceError> {
    let table = format!("{}.{}", rel.schema, rel.table);
    let message = format!("cannot decode a row of {table} at {lsn} (commit {}, ordinal {ordinal}): {error}", tx.commit_lsn);
    if on_decode_error == OnDecodeError::Stop {
        return Err(SourceError::permanent(format!(
            "{message}; set source.postgres.on_decode_error: dead_letter to send such rows to the dead-letter file and go on"
        )));
    }
    metrics::counter!(m::DECODE_ERRORS_TOTAL, m::LABEL_TABLE => table.clone()).increment(1);
    warn!(table = %table, position = %format!("{}#{ordinal}", tx.commit_lsn), error = %error, "row cannot be decoded; dead-lettered");
    let change = Arc::new(raw_change(rel, msg, lsn, tx, ordinal));
    dead_letters
        .write(vec![DeadLetter {
            stage: Stage::Decode,
            pipeline: Arc::from("(source)"),
            sink: Arc::from("(decode)"),
            error: message,
            change,
            source: None,
        }])
        .await;
    Ok(())
}
