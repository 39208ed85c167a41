//! Reading a `mode: upsert` table back for `pgfanout verify`.
//!
//! A source row must be the CQL row the sink writes for it as a snapshot
//! row: its mapped columns, read by primary key (`SELECT ... WHERE pk = ?`)
//! and compared value by value. Extras: every primary key of the table
//! (a paged full scan; a table shared with another pipeline shows that
//! pipeline's rows as extra). `mode: append` tables are logs of changes,
//! not state: not verified.
//!
//! Removing an extra row deletes it `USING TIMESTAMP` = the newest write
//! time of its columns, so a later write from the stream (a larger
//! position) still lands. Divergence written with wall-clock timestamps
//! (the driver's default, far above WAL positions) cannot be repaired by
//! pgfanout's writes: such rows are reported again.

use std::collections::HashMap;

use futures_util::future::join_all;
use futures_util::TryStreamExt;
use pgfanout_sdk::connector::BoxFuture;
use pgfanout_sdk::verify::{Expected, Verifier};
use pgfanout_sdk::{SinkError, SinkRecord};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};
use serde_json::{Map, Value as Json};

use crate::config::{Mode, ScyllaMapping, ScyllaSettings};
use crate::datetime::{format_date, format_time_nanos, format_timestamp_ms};
use crate::encode::{upsert_actions, Action, Cql};
use crate::error::ScyllaError;
use crate::route::{compile_routes, Route};
use crate::session::open_session;
use crate::types::{decimal_text, signed_digits};

pub(crate) struct ScyllaVerifier {
    session: Session,
    route: Route,
    select: PreparedStatement,
    rows: HashMap<String, Vec<Cql>>,
}

pub(crate) fn verifiable(m: &ScyllaMapping) -> Result<(), String> {
    match m.mode {
        Mode::Append => Err("mode: append adds a row per change: the table is a log, not state to compare".into()),
        Mode::Upsert => Ok(()),
    }
}

/// A reply that could not be read as rows, or a scan that broke off:
/// retriable, as a lost request is.
fn unreadable<E: std::fmt::Display>(step: &'static str) -> impl Fn(E) -> ScyllaError {
    move |e| ScyllaError::NoAnswer(e.to_string()).during(step)
}

/// The verifier of mapping `m` (the sink boundary: errors become
/// [`SinkError`]s here).
pub(crate) async fn connect(s: &ScyllaSettings, m: &ScyllaMapping) -> Result<Box<dyn Verifier>, SinkError> {
    verifiable(m).map_err(SinkError::Permanent)?;
    Ok(Box::new(ScyllaVerifier::connect(s, m).await?))
}

/// How a CQL value is compared and shown: exactly, never through a float.
/// Both sides of a comparison are CQL values rendered here (the expected
/// one is the sink's own mapping of the source row, [`to_cql`]), so this
/// only has to be injective: text as text; int, smallint and tinyint as
/// JSON numbers (exact in any reader); bigint, varint, decimal, float and
/// double as their digits in a string (`"12.50"`, `"NaN"`, `"-0.0"`: a
/// JSON number would be compared as an f64 and lose digits); dates and
/// timestamps as PostgreSQL writes them (`0044-03-15 BC`); sets in a
/// canonical order (the store sorts them).
///
/// [`to_cql`]: crate::types::to_cql
fn text(v: &Cql) -> Json {
    match v {
        None => Json::Null,
        Some(v) => render(v),
    }
}

fn render(v: &CqlValue) -> Json {
    match v {
        CqlValue::Text(s) | CqlValue::Ascii(s) => Json::String(s.clone()),
        CqlValue::Int(i) => Json::from(*i),
        CqlValue::SmallInt(i) => Json::from(*i),
        CqlValue::TinyInt(i) => Json::from(*i),
        CqlValue::BigInt(i) => Json::String(i.to_string()),
        CqlValue::Boolean(b) => Json::from(*b),
        CqlValue::Double(f) => Json::String(format!("{f:?}")),
        CqlValue::Float(f) => Json::String(format!("{f:?}")),
        CqlValue::Varint(v) => Json::String(signed_digits(v.as_signed_bytes_be_slice())),
        CqlValue::Decimal(d) => {
            let (bytes, scale) = d.as_signed_be_bytes_slice_and_exponent();
            Json::String(decimal_text(bytes, scale))
        }
        CqlValue::Date(d) => Json::String(format_date(i64::from(d.0) - (1 << 31))),
        CqlValue::Timestamp(t) => Json::String(format_timestamp_ms(t.0)),
        CqlValue::Time(t) => Json::String(format_time_nanos(t.0)),
        CqlValue::Inet(ip) => Json::String(ip.to_string()),
        CqlValue::Uuid(u) => Json::String(u.to_string()),
        CqlValue::Timeuuid(u) => Json::String(u.to_string()),
        CqlValue::Blob(b) => Json::String(format!("\\x{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())),
        CqlValue::List(items) => Json::Array(items.iter().map(render).collect()),
        CqlValue::Set(items) => {
            let mut items: Vec<Json> = items.iter().map(render).collect();
            items.sort_by_cached_key(|j| j.to_string());
            Json::Array(items)
        }
        other => Json::String(format!("{other:?}")),
    }
}

impl ScyllaVerifier {
    async fn connect(s: &ScyllaSettings, m: &ScyllaMapping) -> Result<ScyllaVerifier, ScyllaError> {
        let session = open_session(s).await?;
        let (mut routes, mut problems) = compile_routes(&session, s, std::slice::from_ref(m));
        let route = match routes.pop() {
            Some(route) if problems.is_empty() => route,
            _ => {
                problems.truncate(1);
                return Err(ScyllaError::Schema(problems).during("verify"));
            }
        };
        let cols: Vec<&str> = route.cols.iter().map(|c| c.name.as_str()).collect();
        let cql = format!("SELECT {} FROM {} WHERE {}", cols.join(", "), route.qualified, pk_condition(&route));
        let select = session.prepare(cql).await.map_err(|e| ScyllaError::from(e).during("verify: prepare"))?;
        Ok(ScyllaVerifier { session, route, select, rows: HashMap::new() })
    }

    fn id_of(&self, pk: &[Cql]) -> String {
        let parts: Vec<String> = self
            .route
            .pk
            .iter()
            .zip(pk)
            .map(|(&i, v)| {
                let t = text(v);
                format!("{}={}", self.route.cols[i].name, t.as_str().map(str::to_string).unwrap_or_else(|| t.to_string()))
            })
            .collect();
        format!("{} ({})", self.route.qualified, parts.join(", "))
    }

    fn remember(&mut self, pk: Vec<Cql>) -> String {
        let id = self.id_of(&pk);
        self.rows.entry(id.clone()).or_insert(pk);
        id
    }

    fn key(&self, id: &str) -> Result<&Vec<Cql>, ScyllaError> {
        self.rows.get(id).ok_or_else(|| ScyllaError::UnknownRow(id.to_string()))
    }

    fn object(&self, values: &[Cql]) -> Json {
        Json::Object(self.route.cols.iter().zip(values).map(|(c, v)| (c.name.clone(), text(v))).collect::<Map<_, _>>())
    }

    /// The stored rows of `ids` (64 reads in flight at a time), `None` for
    /// a missing one.
    async fn read_rows(&self, ids: &[String]) -> Result<Vec<Option<Json>>, ScyllaError> {
        let mut out = Vec::with_capacity(ids.len());
        for part in ids.chunks(64) {
            let keys = part.iter().map(|id| self.key(id)).collect::<Result<Vec<_>, _>>()?;
            let results = join_all(keys.into_iter().map(|pk| self.session.execute_unpaged(&self.select, pk))).await;
            for r in results {
                let r = r.map_err(|e| ScyllaError::from(e).during("verify: read"))?;
                let rows = r.into_rows_result().map_err(unreadable("verify: read"))?;
                let row = rows.rows::<Row>().map_err(unreadable("verify: read"))?.next().transpose().map_err(unreadable("verify: read"))?;
                out.push(row.map(|r| self.object(&r.columns)));
            }
        }
        Ok(out)
    }

    /// Every primary key in the table (a paged full scan).
    async fn list_keys(&mut self) -> Result<Vec<String>, ScyllaError> {
        let names: Vec<&str> = self.route.pk.iter().map(|&i| self.route.cols[i].name.as_str()).collect();
        let cql = format!("SELECT {} FROM {}", names.join(", "), self.route.qualified);
        let mut pager = self
            .session
            .query_iter(cql, ())
            .await
            .map_err(unreadable("verify: list"))?
            .rows_stream::<Row>()
            .map_err(unreadable("verify: list"))?;
        let mut keys = Vec::new();
        while let Some(row) = pager.try_next().await.map_err(unreadable("verify: list"))? {
            keys.push(row.columns);
        }
        Ok(keys.into_iter().map(|pk| self.remember(pk)).collect())
    }

    /// Deletes the rows of `ids`, each `USING TIMESTAMP` its newest write
    /// time (module docs).
    async fn remove_rows(&self, ids: &[String]) -> Result<(), ScyllaError> {
        let cond = pk_condition(&self.route);
        let regular: Vec<String> = (0..self.route.cols.len())
            .filter(|i| !self.route.pk.contains(i))
            .map(|i| format!("WRITETIME({})", self.route.cols[i].name))
            .collect();
        let prepare = |e| ScyllaError::from(e).during("verify: prepare");
        let delete =
            self.session.prepare(format!("DELETE FROM {} USING TIMESTAMP ? WHERE {cond}", self.route.qualified)).await.map_err(prepare)?;
        let times = if regular.is_empty() {
            None
        } else {
            let cql = format!("SELECT {} FROM {} WHERE {cond}", regular.join(", "), self.route.qualified);
            Some(self.session.prepare(cql).await.map_err(prepare)?)
        };
        for id in ids {
            let Some(pk) = self.rows.get(id) else { continue };
            let at = match &times {
                Some(times) => self.newest_write(times, pk).await?,
                None => 0,
            };
            let mut values: Vec<Cql> = vec![Some(CqlValue::BigInt(at))];
            values.extend(pk.iter().cloned());
            self.session.execute_unpaged(&delete, values).await.map_err(|e| ScyllaError::from(e).during("verify: delete"))?;
        }
        Ok(())
    }

    /// The newest write time of the row `pk`'s regular columns (0 if none).
    async fn newest_write(&self, times: &PreparedStatement, pk: &[Cql]) -> Result<i64, ScyllaError> {
        let r = self.session.execute_unpaged(times, pk).await.map_err(|e| ScyllaError::from(e).during("verify: writetime"))?;
        let rows = r.into_rows_result().map_err(unreadable("verify: writetime"))?;
        let row =
            rows.rows::<Row>().map_err(unreadable("verify: writetime"))?.next().transpose().map_err(unreadable("verify: writetime"))?;
        let newest = row.and_then(|row| {
            row.columns
                .iter()
                .filter_map(|c| match c {
                    Some(CqlValue::BigInt(t)) => Some(*t),
                    _ => None,
                })
                .max()
        });
        Ok(newest.unwrap_or(0))
    }
}

/// `a = ? AND b = ?` over the route's primary key.
fn pk_condition(route: &Route) -> String {
    let cond: Vec<String> = route.pk.iter().map(|&i| format!("{} = ?", route.cols[i].name)).collect();
    cond.join(" AND ")
}

/// The sink boundary for `verify`: each call's [`ScyllaError`] becomes a
/// [`SinkError`].
impl Verifier for ScyllaVerifier {
    fn expect(&mut self, record: &SinkRecord) -> Result<Vec<Expected>, String> {
        let mut out = Vec::new();
        for action in upsert_actions(&self.route, &record.change).map_err(|e| e.to_string())? {
            if let Action::Write { pk, cols } = action {
                let mut values: Vec<Cql> = vec![None; self.route.cols.len()];
                for (&i, v) in self.route.pk.iter().zip(&pk) {
                    values[i] = v.clone();
                }
                for (i, v) in cols {
                    values[i] = v;
                }
                let value = self.object(&values);
                out.push(Expected { id: self.remember(pk), value });
            }
        }
        Ok(out)
    }

    fn read<'a>(&'a mut self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<Option<Json>>, SinkError>> {
        Box::pin(async move { Ok(self.read_rows(ids).await?) })
    }

    fn list(&mut self) -> BoxFuture<'_, Result<Option<Vec<String>>, SinkError>> {
        Box::pin(async move { Ok(Some(self.list_keys().await?)) })
    }

    fn remove<'a>(&'a mut self, ids: &'a [String]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move { Ok(self.remove_rows(ids).await?) })
    }
}
