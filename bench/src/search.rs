//! The search workload: pgfanout streaming `bench_rows` inserts into an
//! OpenSearch index, against the engine's own ceiling on this machine: the
//! same documents, pre-built as NDJSON, sent with `_bulk` at the same batch
//! size and concurrency (1000 actions, 2 requests in flight, external
//! versions) by a plain loader. pgfanout runs with `runtime.batch_size`
//! = 95% of lanes × bulk size, so its requests have nearly the loader's
//! shape.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::db::Db;
use crate::load::Shape;
use crate::report::Figure;
use crate::store;
use crate::throughput::Ctx;
use crate::tools::FanoutConfig;

const LABEL: &str = "search (opensearch)";
const BULK: usize = 1000;
const LANES: usize = 2;

pub async fn run(ctx: &Ctx) -> Result<Vec<Figure>> {
    let node = tokio::task::spawn_blocking(testkit::OpenSearchNode::start).await?;
    let url = node.url();
    let http = reqwest::Client::new();
    let db = store::source_db(ctx).await?;
    let mut figures = Vec::new();
    // Both transaction shapes: one transaction of all the rows (PostgreSQL
    // spills it to disk while decoding, and its walsender costs more per
    // row), and transactions of 100 rows.
    for (shape_no, shape, mut figs) in store::store_shapes(LABEL, "plain _bulk loader") {
        let changes = shape.changes(ctx.rows);
        let timeout = Duration::from_secs(600.max(changes / 1_000));
        for run in 0..ctx.runs {
            let slot = format!("pgf_search_{run}");
            let warm_up = run == 0 && shape_no == 0;
            let slots = if warm_up { vec![slot.as_str(), "pgf_search_warmup"] } else { vec![slot.as_str()] };
            let end = store::load_run(&db, shape, ctx.rows, &slots).await?;
            let index = format!("bench-pgfanout-{run}");
            let cfg = FanoutConfig {
                slot: &slot,
                table: shape.table(),
                sink: format!("{{ type: opensearch, urls: [\"{url}\"], concurrency: {LANES}, bulk: {{ max_records: {BULK} }} }}"),
                mapping: format!("    opensearch: {{ index: {index}, id: \"{{id}}\" }}\n"),
                http_listen: None,
                // Requests of nearly the plain loader's shape: each write gives
                // every lane one `_bulk` request of ~950 actions (hash lanes are
                // not exactly even, so a full 2,000 would often add a small
                // second request to one lane).
                batch_size: Some(BULK * LANES * 95 / 100),
            };
            // Order alternates between runs (the engine's JIT warms up as it
            // goes), after an unmeasured warm-up pass of each tool in the first
            // run.
            if warm_up {
                plain_load(&db, &http, &url, shape, "bench-warmup").await?;
                store::warm_up(ctx, &db, &cfg, "pgf_search_warmup", (&index, "bench-warmup-fan"), end, timeout).await?;
            }
            let base_index = format!("bench-plain-{run}");
            let loader = plain_load(&db, &http, &url, shape, &base_index);
            let (f, (plain, plain_cpu)) = store::measure_run(ctx, &db, &cfg, run, end, timeout, loader).await?;
            let n = count(&http, &url, &index).await?;
            if n != changes {
                bail!("index {index} holds {n} documents, expected {changes}");
            }
            figs.record(changes, &f, plain, plain_cpu);
            db.drop_slot(&slot).await?;
            for i in [index.as_str(), base_index.as_str(), "bench-warmup", "bench-warmup-fan"] {
                let _ = http.delete(format!("{url}/{i}")).send().await;
            }
        }
        figures.extend(figs.into_figures());
    }
    drop(node);
    Ok(figures)
}

/// The plain loader: the table's rows as pre-built NDJSON (built before the
/// clock starts), `_bulk` at BULK actions, LANES requests in flight, into
/// `index`. Returns (seconds, CPU seconds of this process).
async fn plain_load(db: &Db, http: &reqwest::Client, url: &str, shape: Shape, index: &str) -> Result<(f64, f64)> {
    let base_index = index;
    let rows = db.client.query(&format!("SELECT id, to_jsonb(t)::text FROM {} t ORDER BY id", shape.table()), &[]).await?;
    let bodies: Vec<Vec<u8>> = rows
        .chunks(BULK)
        .map(|chunk| {
            let mut b = Vec::new();
            for r in chunk {
                let id: i64 = r.get(0);
                let doc: String = r.get(1);
                b.extend_from_slice(
                    format!(
                        "{{\"index\":{{\"_index\":\"{base_index}\",\"_id\":\"{id}\",\"version\":1,\"version_type\":\"external_gte\"}}}}\n"
                    )
                    .as_bytes(),
                );
                b.extend_from_slice(doc.as_bytes());
                b.push(b'\n');
            }
            b
        })
        .collect();
    store::timed_load(async {
        let mut lanes: Vec<Vec<Vec<u8>>> = (0..LANES).map(|_| Vec::new()).collect();
        for (i, b) in bodies.into_iter().enumerate() {
            lanes[i % LANES].push(b);
        }
        let sends = lanes.into_iter().map(|lane| {
            let (http, url) = (http.clone(), url.to_string());
            async move {
                for body in lane {
                    let resp = http.post(format!("{url}/_bulk")).header("content-type", "application/x-ndjson").body(body).send().await?;
                    let j: serde_json::Value = resp.json().await?;
                    if j["errors"] == true {
                        bail!("plain loader: bulk errors: {}", j.to_string().chars().take(300).collect::<String>());
                    }
                }
                Ok::<(), anyhow::Error>(())
            }
        });
        for r in futures_util::future::join_all(sends).await {
            r?;
        }
        Ok(())
    })
    .await
}

async fn count(http: &reqwest::Client, url: &str, index: &str) -> Result<u64> {
    http.post(format!("{url}/{index}/_refresh")).send().await?;
    let j: serde_json::Value = http.get(format!("{url}/{index}/_count")).send().await?.json().await?;
    j["count"].as_u64().context("no count")
}
