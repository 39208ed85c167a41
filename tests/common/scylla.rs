//! CQL reads of what the ScyllaDB sink wrote. Shared by the end-to-end
//! tests and the ScyllaDB connector's own tests
//! (`connectors/scylla/tests/scylla.rs` includes this file).
// Each includer uses a part of it.
#![allow(dead_code)]

use pgfanout_scylla::driver::client::session::Session;
use pgfanout_scylla::driver::deserialize::row::DeserializeRow;

/// The rows `cql` selects (one page); panics on any error.
pub async fn select<R>(session: &Session, cql: String) -> Vec<R>
where
    R: for<'f, 'm> DeserializeRow<'f, 'm>,
{
    session.query_unpaged(cql, ()).await.unwrap().into_rows_result().unwrap().rows::<R>().unwrap().map(|r| r.unwrap()).collect()
}

/// The one row `cql` selects; panics unless there is exactly one.
pub async fn select_one<R>(session: &Session, cql: String) -> R
where
    R: for<'f, 'm> DeserializeRow<'f, 'm>,
{
    session.query_unpaged(cql, ()).await.unwrap().into_rows_result().unwrap().single_row::<R>().unwrap()
}
