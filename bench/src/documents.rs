//! The documents workload: pgfanout streaming `bench_rows` inserts into a
//! MongoDB collection (`type: mongodb`, one document per row), against the
//! store's own ceiling on this machine: a plain loader with the same
//! `mongodb` driver inserting the same documents (built before the clock
//! starts), 1,000 per `insert` command. MongoDB's own server cannot be had
//! here; FerretDB 1.24 (testkit::FerretDb) is the store, on a PostgreSQL
//! cluster of its own (not the source's), so its writes do not add to the
//! WAL the slot decodes.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use mongodb::bson::{doc, Bson, Document};

use crate::db::Db;
use crate::load::Shape;
use crate::report::Figure;
use crate::store;
use crate::throughput::Ctx;
use crate::tools::FanoutConfig;

const LABEL: &str = "documents (mongodb on ferretdb)";
const DATABASE: &str = "bench";
/// Documents per `insert` command of the plain loader.
const CHUNK: usize = 1000;

pub async fn run(ctx: &Ctx) -> Result<Vec<Figure>> {
    let (store_pg, ferret) = tokio::task::spawn_blocking(|| {
        let pg = testkit::PgCluster::start();
        let f = testkit::FerretDb::start(&pg);
        (pg, f)
    })
    .await?;
    let uri = ferret.uri();
    let client = mongodb::Client::with_uri_str(&uri).await.context("connect to FerretDB")?;
    let database = client.database(DATABASE);
    let db = store::source_db(ctx).await?;
    let mut figures = Vec::new();
    for (shape_no, shape, mut figs) in store::store_shapes(LABEL, "plain insert_many loader") {
        let changes = shape.changes(ctx.rows);
        let timeout = Duration::from_secs(900.max(changes / 200));
        for run in 0..ctx.runs {
            let (fan, plain) = (format!("docs_pgfanout_{shape_no}_{run}"), format!("docs_plain_{shape_no}_{run}"));
            let slot = format!("pgf_docs_{run}");
            let warm_up = run == 0 && shape_no == 0;
            let slots = if warm_up { vec![slot.as_str(), "pgf_docs_warmup"] } else { vec![slot.as_str()] };
            let end = store::load_run(&db, shape, ctx.rows, &slots).await?;
            let cfg = FanoutConfig {
                slot: &slot,
                table: shape.table(),
                sink: format!("{{ type: mongodb, uri: \"{uri}\", database: {DATABASE} }}"),
                mapping: format!("    mongodb: {{ collection: {fan} }}\n"),
                http_listen: None,
                batch_size: None,
            };
            if warm_up {
                plain_load(&db, &database, shape, &format!("warmup_plain_{shape_no}")).await?;
                store::warm_up(ctx, &db, &cfg, "pgf_docs_warmup", (&fan, "warmup_fan"), end, timeout).await?;
            }
            let loader = plain_load(&db, &database, shape, &plain);
            let (f, (plain_s, plain_cpu)) = store::measure_run(ctx, &db, &cfg, run, end, timeout, loader).await?;
            let n = database.collection::<Document>(&fan).count_documents(doc! {}).await?;
            if n != changes {
                bail!("collection {fan} holds {n} documents, expected {changes}");
            }
            figs.record(changes, &f, plain_s, plain_cpu);
            db.drop_slot(&slot).await?;
            for c in [fan.as_str(), plain.as_str()] {
                let _ = database.collection::<Document>(c).drop().await;
            }
        }
        figures.extend(figs.into_figures());
    }
    let _ = database.drop().await;
    client.shutdown().await;
    drop(ferret);
    drop(store_pg);
    Ok(figures)
}

/// The plain loader: the table's rows as the documents pgfanout writes
/// (`to_jsonb` of each row, `_id` its id), built before the clock starts,
/// inserted `CHUNK` per command into `collection`. Returns (seconds, CPU
/// seconds of this process).
async fn plain_load(db: &Db, database: &mongodb::Database, shape: Shape, collection: &str) -> Result<(f64, f64)> {
    let rows = db.client.query(&format!("SELECT to_jsonb(t)::text FROM {} t ORDER BY id", shape.table()), &[]).await?;
    let mut docs = Vec::with_capacity(rows.len());
    for r in rows {
        let json: serde_json::Value = serde_json::from_str(&r.get::<_, String>(0))?;
        let Bson::Document(mut d) = bson(&json) else { bail!("a row is not an object") };
        let id = d.get("id").cloned().unwrap_or(Bson::Null);
        d.insert("_id", id);
        docs.push(d);
    }
    let mut chunks: Vec<Vec<Document>> = Vec::new();
    while !docs.is_empty() {
        let rest = docs.split_off(docs.len().min(CHUNK));
        chunks.push(std::mem::replace(&mut docs, rest));
    }
    let coll = database.collection::<Document>(collection);
    store::timed_load(async {
        for chunk in chunks {
            coll.insert_many(chunk).await.context("plain loader insert_many")?;
        }
        Ok(())
    })
    .await
}

/// A row's JSON as BSON, numbers as pgfanout stores these columns
/// (integers as int32/int64, numeric(12,2) as doubles).
fn bson(j: &serde_json::Value) -> Bson {
    use serde_json::Value as J;
    match j {
        J::Null => Bson::Null,
        J::Bool(b) => Bson::Boolean(*b),
        J::Number(n) => {
            let text = n.to_string();
            match text.parse::<i64>() {
                Ok(i) => i32::try_from(i).map(Bson::Int32).unwrap_or(Bson::Int64(i)),
                Err(_) => Bson::Double(text.parse().unwrap_or(f64::NAN)),
            }
        }
        J::String(s) => Bson::String(s.clone()),
        J::Array(a) => Bson::Array(a.iter().map(bson).collect()),
        J::Object(m) => Bson::Document(m.iter().map(|(k, v)| (k.clone(), bson(v))).collect()),
    }
}
