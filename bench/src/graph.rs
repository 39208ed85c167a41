//! The graph workload: pgfanout streaming `bench_rows` inserts into Neo4j as
//! nodes (`type: neo4j`, `node: { label, key: { id: id } }`, every column a
//! property), against the store's own ceiling on this machine: a plain
//! `neo4rs` client sending the same rows as the same
//! `UNWIND $rows AS row MERGE (n:Label {id: row.k.id}) WITH n, row WHERE
//! <version guard> SET n += row.p, ...` statement, with the same batch size
//! (1,000 rows per statement, one statement per transaction, one
//! transaction at a time, as the sink writes), the rows built before the
//! clock starts. Both labels have the same key index (the sink creates its own at start). The store is
//! Neo4j 5.26 Community (testkit::Neo4jServer, 512 MB heap).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use neo4rs::{query, BoltList, BoltMap, BoltString, BoltType, ConfigBuilder, Graph};

use crate::db::Db;
use crate::load::Shape;
use crate::report::Figure;
use crate::store;
use crate::throughput::Ctx;
use crate::tools::FanoutConfig;

const LABEL: &str = "graph (neo4j)";
/// Rows per `UNWIND` statement and per transaction, for both tools.
const BATCH: usize = 1000;

pub async fn run(ctx: &Ctx) -> Result<Vec<Figure>> {
    let server = tokio::task::spawn_blocking(testkit::Neo4jServer::start).await?;
    let config = ConfigBuilder::new()
        .uri(server.uri())
        .user(server.user.as_str())
        .password(server.password.as_str())
        .db(server.database.as_str())
        .max_connections(2)
        .build()?;
    let graph = Graph::connect(config).await.context("connect to Neo4j")?;
    let db = store::source_db(ctx).await?;
    // An unmeasured pass of the plain client first: the first measured pass
    // otherwise pays for Neo4j compiling its paths (pgfanout ran at 0.6x of
    // the loader in the first shape's first run and at 0.9x in the second).
    db.exec(&Shape::Big.load_sql(ctx.rows.min(200_000))).await?;
    graph.run(query("CREATE INDEX IF NOT EXISTS FOR (n:RowWarmup) ON (n.id)")).await?;
    plain_load(&db, &graph, Shape::Big, "RowWarmup").await?;
    delete_label(&graph, "RowWarmup").await?;
    let mut figures = Vec::new();
    // Both transaction shapes (see `store::store_shapes`).
    for (shape_no, shape, mut figs) in store::store_shapes(LABEL, "plain UNWIND ... MERGE client") {
        let changes = shape.changes(ctx.rows);
        let timeout = Duration::from_secs(900.max(changes / 200));
        for run in 0..ctx.runs {
            let (fan_label, plain_label) = (format!("RowFanout{shape_no}_{run}"), format!("RowPlain{shape_no}_{run}"));
            // The sink creates its label's index at start (create_indexes).
            graph.run(query(&format!("CREATE INDEX IF NOT EXISTS FOR (n:{plain_label}) ON (n.id)"))).await?;
            let slot = format!("pgf_graph_{run}");
            let end = store::load_run(&db, shape, ctx.rows, &[&slot]).await?;
            let cfg = FanoutConfig {
                slot: &slot,
                table: shape.table(),
                sink: format!(
                    "{{ type: neo4j, uri: \"{}\", user: {}, password: {}, database: {}, max_batch: {BATCH} }}",
                    server.uri(),
                    server.user,
                    server.password,
                    server.database
                ),
                mapping: format!("    neo4j: {{ node: {{ label: {fan_label}, key: {{ id: id }} }} }}\n"),
                http_listen: None,
                batch_size: Some(BATCH),
            };
            let loader = plain_load(&db, &graph, shape, &plain_label);
            let (f, (plain, plain_cpu)) = store::measure_run(ctx, &db, &cfg, run, end, timeout, loader).await?;
            for l in [&fan_label, &plain_label] {
                let n = count(&graph, l).await?;
                if n != changes {
                    bail!("label {l} has {n} nodes, expected {changes}");
                }
            }
            figs.record(changes, &f, plain, plain_cpu);
            db.drop_slot(&slot).await?;
            for l in [&fan_label, &plain_label] {
                delete_label(&graph, l).await?;
            }
        }
        figures.extend(figs.into_figures());
    }
    drop(graph);
    drop(server);
    Ok(figures)
}

/// The plain loader: the table's rows as the sink's parameter rows
/// (`{k: {id}, p: {every column}, v: version}`, numbers as integers and
/// floats, timestamps as to_jsonb text), built before the clock starts, sent
/// `BATCH` per statement and transaction. Returns (seconds, CPU seconds of
/// this process).
async fn plain_load(db: &Db, graph: &Graph, shape: Shape, label: &str) -> Result<(f64, f64)> {
    let rows = db
        .client
        .query(
            &format!("SELECT id, account, name, amount::float8, to_jsonb(created_at) #>> '{{}}', note FROM {} ORDER BY id", shape.table()),
            &[],
        )
        .await?;
    let batches: Vec<BoltType> = rows
        .chunks(BATCH)
        .enumerate()
        .map(|(b, chunk)| {
            let list: Vec<BoltType> = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let id: i64 = r.get(0);
                    let mut p = BoltMap::new();
                    p.put(BoltString::from("id"), BoltType::from(id));
                    p.put(BoltString::from("account"), BoltType::from(r.get::<_, i32>(1) as i64));
                    p.put(BoltString::from("name"), BoltType::from(r.get::<_, String>(2)));
                    p.put(BoltString::from("amount"), BoltType::from(r.get::<_, f64>(3)));
                    p.put(BoltString::from("created_at"), BoltType::from(r.get::<_, String>(4)));
                    p.put(BoltString::from("note"), BoltType::from(r.get::<_, String>(5)));
                    let mut k = BoltMap::new();
                    k.put(BoltString::from("id"), BoltType::from(id));
                    let mut row = BoltMap::new();
                    row.put(BoltString::from("k"), BoltType::Map(k));
                    row.put(BoltString::from("p"), BoltType::Map(p));
                    row.put(BoltString::from("v"), BoltType::from(format!("{:020}{:010}", 1_000_000 + b, i)));
                    BoltType::Map(row)
                })
                .collect();
            BoltType::List(BoltList::from(list))
        })
        .collect();
    drop(rows);
    let statement = format!(
        "UNWIND $rows AS row MERGE (n:{label} {{id: row.k.id}}) WITH n, row \
         WHERE n._pgfanout_version IS NULL OR n._pgfanout_version <= row.v \
         SET n += row.p, n._pgfanout_version = row.v"
    );
    store::timed_load(async {
        for rows in batches {
            let mut txn = graph.start_txn().await?;
            txn.run(query(&statement).param("rows", rows)).await.context("plain loader statement")?;
            txn.commit().await?;
        }
        Ok(())
    })
    .await
}

async fn count(graph: &Graph, label: &str) -> Result<u64> {
    let mut result = graph.execute(query(&format!("MATCH (n:{label}) RETURN count(n) AS n"))).await?;
    let row = result.next().await?.context("count returned no row")?;
    Ok(row.get::<i64>("n")? as u64)
}

/// Deletes a label's nodes in transactions of 10,000 (one delete of a
/// million nodes would need more heap than the test server has).
async fn delete_label(graph: &Graph, label: &str) -> Result<()> {
    graph.run(query(&format!("MATCH (n:{label}) CALL {{ WITH n DETACH DELETE n }} IN TRANSACTIONS OF 10000 ROWS"))).await?;
    Ok(())
}
