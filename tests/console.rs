//! The browser console (`/`) in a real headless browser: Debian's
//! `chromium` driven through its `chromedriver` with fantoccini (WebDriver).
//! `scripts/test.sh` installs both; without them this test fails and says so.
//!
//! A backfill runs (rate-limited so it lasts) while the Redis sink is down:
//! the page must show the backfill's progress moving and the sink's error,
//! pause the backfill with the admin token, fit a phone's width, and log no
//! errors in the browser's console. Screenshots are left in
//! `$CARGO_TARGET_TMPDIR` (`console-desktop.png`, `console-phone.png`).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value as Json};
use testkit::RedisServer;

const TOKEN: &str = "console-test-token-0123456789";
const ROWS: i64 = 60_000;

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let exe = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("chromedriver is missing: apt-get install chromium chromium-driver (scripts/test.sh does)");
        let port = testkit::free_port();
        let child = Command::new(exe)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver { child, port }
    }

    async fn browser(&self) -> Client {
        let caps = json!({
            "goog:chromeOptions": {
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1800"],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let caps = caps.as_object().unwrap().clone();
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a chromium session")
    }
}

impl Drop for Driver {
    /// Stops the chromium chromedriver started (a failed test leaves its
    /// session open; its helper processes end with it), then chromedriver.
    fn drop(&mut self) {
        let _ = Command::new("pkill").args(["-KILL", "-P", &self.child.id().to_string()]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver's browser log (`POST /session/{id}/se/log`), which the
/// W3C protocol lacks: every console message and failed load of the page.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (::http::Method, Option<String>) {
        (::http::Method::POST, Some(json!({ "type": "browser" }).to_string()))
    }
}

async fn eval(b: &Client, js: &str) -> Json {
    b.execute(js, vec![]).await.unwrap_or_else(|e| panic!("{js}: {e}"))
}

/// Polls `js` in the page until it returns something truthy; that value.
async fn wait_js(b: &Client, js: &str, what: &str, d: &Daemon) -> Json {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = eval(b, js).await;
        if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: never shown; page:\n{}\n{}", b.source().await.unwrap_or_default(), d.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn save(png: &[u8], name: &str) {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_backfill_moving_and_a_failing_sink() {
    let db = "console";
    let (pg, c) = cluster(db).await;
    c.batch_execute(&format!(
        "CREATE TABLE orders (id int PRIMARY KEY, note text);
         INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, {ROWS}) g;
         ANALYZE orders;
         CREATE TABLE carts (id int PRIMARY KEY, n int);"
    ))
    .await
    .unwrap();
    let redis = tokio::task::spawn_blocking(RedisServer::start).await.unwrap();
    let dir = scratch();
    let port = testkit::free_port();
    let sinks = format!(
        "  cache: {{ type: redis, url: \"{}\", reconnect_max_delay: 1s, connect_timeout: 1s, response_timeout: 2s }}\n  out: {{ type: file, path: \"{}\" }}",
        redis.url(),
        dir.path().join("out.jsonl").display()
    );
    // `audit`'s filter fails on every cart (division by zero): its
    // records are dead-lettered, and the page lists them.
    let pipelines = "  - name: carts\n    from: public.carts\n    to: cache\n    redis: { type: hash, key: \"cart:{id}\" }\n  - name: orders\n    from: public.orders\n    to: out\n  - name: audit\n    from: public.carts\n    to: out\n    filter: \"after.n / 0 > 1\"";
    let yaml = daemon_config(&pg, db, db, &sinks, pipelines, &dir.path().join("dead.jsonl"))
        .replace("http:\n  enabled: false\n", &format!("http:\n  listen: \"127.0.0.1:{port}\"\n  admin_token: \"{TOKEN}\"\n"));
    // Rates sampled every 500 ms, so the charts fill within the test.
    std::env::set_var("PGFANOUT_CONSOLE_SAMPLE_MS", "500");
    let d = Daemon::start(bin(), dir.path(), db, &yaml);
    wait_slot(&c, db, &d).await;

    // The Redis sink goes down and has a change to write.
    tokio::task::block_in_place(|| redis.stop());
    c.batch_execute("INSERT INTO carts VALUES (1, 1)").await.unwrap();

    // A backfill that lasts about a minute; without the token it is refused.
    let http = reqwest::Client::new();
    let start = format!("http://127.0.0.1:{port}/backfills?table=public.orders&max_rows_per_second=1000&chunk_size=200");
    let refused = http.post(&start).send().await.unwrap();
    assert_eq!(refused.status(), 401, "{}", refused.text().await.unwrap());
    let started = http.post(&start).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(started.status(), 202, "{}", started.text().await.unwrap());

    let driver = tokio::task::block_in_place(Driver::start);
    let b = driver.browser().await;
    b.goto(&format!("http://127.0.0.1:{port}/")).await.unwrap();

    // The sink's error, as the store's client reported it.
    let error = wait_js(
        &b,
        "const e = document.querySelector('.sink[data-name=\"cache\"] .error'); return e && e.textContent",
        "the Redis sink's error",
        &d,
    )
    .await;
    let error = error.as_str().unwrap().to_string();
    assert!(error.starts_with("failing for"), "{error}");
    assert_eq!(eval(&b, "return document.querySelector('#state').textContent").await, json!("1 sink failing"));
    let out_ok = eval(&b, "return document.querySelector('.sink[data-name=\"out\"] .pill').textContent").await;
    assert_eq!(out_ok, json!("ok"));

    // The backfill's progress moves, with a rate and an ETA.
    let rows_js = "const b = document.querySelector('.backfill[data-status=\"running\"]'); return b && Number(b.dataset.rows)";
    let first = wait_js(&b, rows_js, "a running backfill with rows", &d).await.as_i64().unwrap();
    let moved_js = format!(
        "const b = document.querySelector('.backfill[data-status=\"running\"]'); return b && Number(b.dataset.rows) > {first} && Number(b.dataset.rows)"
    );
    let moved = wait_js(&b, &moved_js, "backfill progress moving", &d).await.as_i64().unwrap();
    assert!(moved > first && moved < ROWS, "{first} then {moved}");
    let line = wait_js(
        &b,
        "const b = document.querySelector('.backfill .muted'); return b && /rows\\/s.*ETA/.test(b.textContent) && b.textContent",
        "rows/s and ETA",
        &d,
    )
    .await;
    assert!(line.as_str().unwrap().contains(&format!("of ~{}", "60,000")), "{line}");
    let pct: f64 = wait_js(
        &b,
        "const p = document.querySelector('.backfill .bar'); return p && Number(p.getAttribute('aria-valuenow'))",
        "a progress percentage",
        &d,
    )
    .await
    .as_f64()
    .unwrap();
    assert!(pct > 0.0 && pct < 100.0, "{pct}");
    // The file sink's write rate, charted: a line with a non-zero point.
    let points = wait_js(
        &b,
        "const l = document.querySelector('.sink[data-name=\"out\"] polyline'); return l && l.getAttribute('points')",
        "the out sink's rate chart",
        &d,
    )
    .await;
    let ys: Vec<f64> = points.as_str().unwrap().split(' ').filter_map(|p| p.split_once(',')?.1.parse().ok()).collect();
    assert!(ys.len() >= 2 && ys.iter().any(|&y| y < 29.0), "a rate above zero is drawn: {points}");
    save(&b.screenshot().await.unwrap(), "console-desktop.png");

    // The last verify of a pipeline, as `pgfanout verify` records it.
    c.batch_execute("INSERT INTO pgfanout.verify_results VALUES ('orders', 2, 60000, 1, now() - interval '5 minutes')").await.unwrap();
    let verified = wait_js(
        &b,
        "const r = [...document.querySelectorAll('#pipelines tbody tr')].find(r => r.cells[0].textContent === 'orders'); \
         return r && r.cells[4].textContent.includes('divergent') && r.cells[4].textContent",
        "the last verify",
        &d,
    )
    .await;
    assert!(verified.as_str().unwrap().starts_with("2 divergent of 60,000 (1 repaired), 5.0 min ago"), "{verified}");

    // The dead letter, with its error.
    let letter = wait_js(&b, "const l = document.querySelector('#letters li'); return l && l.textContent", "the dead letter", &d).await;
    let letter = letter.as_str().unwrap();
    assert!(letter.contains("public.carts {\"id\":1} → out (audit)") && letter.contains("Division by zero"), "{letter}");

    // The admin token enables the buttons: pause from the page.
    b.find(Locator::Css("#token")).await.unwrap().send_keys(TOKEN).await.unwrap();
    let pause = b.wait().for_element(Locator::XPath("//div[@class='actions']/button[text()='pause']")).await.unwrap();
    pause.click().await.unwrap();
    wait_js(&b, "return document.querySelector('.backfill[data-status=\"paused\"]') !== null", "the backfill paused", &d).await;
    let status: String = c.query_one("SELECT status FROM pgfanout.backfills ORDER BY id DESC LIMIT 1", &[]).await.unwrap().get(0);
    assert_eq!(status, "paused");

    // A phone's width: nothing sticks out sideways.
    b.set_window_size(390, 844).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let overflow = eval(&b, "return document.documentElement.scrollWidth - window.innerWidth").await;
    assert!(overflow.as_i64().unwrap() <= 0, "the page is wider than a phone by {overflow} px");
    save(&b.screenshot().await.unwrap(), "console-phone.png");

    // No errors in the browser's console (a failed load, a script error).
    let log = b.issue_cmd(BrowserLog).await.unwrap();
    let severe: Vec<&Json> = log.as_array().unwrap().iter().filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING").collect();
    assert!(severe.is_empty(), "browser console: {severe:?}");

    b.close().await.unwrap();
    // The file has the letter the page showed, and nothing else.
    let dead = dir.path().join("dead.jsonl");
    assert_eq!(line_count(&dead), 1, "{}\n{}", std::fs::read_to_string(&dead).unwrap_or_default(), d.log());
}

/// `pgfanout backfill --follow` and `pgfanout verify`: under a
/// pseudo-terminal (util-linux `script`) a redrawn bar with rows, rate and
/// ETA; in a pipe plain lines, no terminal escapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_follow_and_verify_draw_a_bar_on_a_terminal_and_lines_in_a_pipe() {
    let db = "follow";
    let (pg, c) = cluster(db).await;
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 20000) g; ANALYZE t;",
    )
    .await
    .unwrap();
    let dir = scratch();
    let redis = tokio::task::spawn_blocking(RedisServer::start).await.unwrap();
    let yaml = redis_config(
        &pg,
        db,
        db,
        &redis.url(),
        "  - name: rows\n    from: public.t\n    to: cache\n    redis: { type: hash, key: \"t:{id}\" }",
        dir.path(),
    );
    let cfg = dir.path().join("follow.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let d = Daemon::start(bin(), dir.path(), db, &yaml);
    wait_slot(&c, db, &d).await;
    let args = |_: ()| {
        vec![
            "backfill".to_string(),
            "-c".into(),
            cfg.display().to_string(),
            "--table".into(),
            "public.t".into(),
            "--max-rows-per-second".into(),
            "5000".into(),
            "--follow".into(),
        ]
    };

    // In a pipe: lines.
    let piped = tokio::task::block_in_place(|| Command::new(bin()).args(args(())).output().unwrap());
    let (out, err) = (String::from_utf8_lossy(&piped.stdout), String::from_utf8_lossy(&piped.stderr));
    assert!(piped.status.success(), "{out}\n{err}\n{}", d.log());
    assert!(out.contains("backfill 1 done"), "{out}");
    assert!(err.contains("backfill 1 public.t: ") && err.contains("of ~20000 rows"), "{err}");
    assert!(err.contains("backfill 1 public.t: done, 20000 rows in"), "{err}");
    assert!(!err.contains('\x1b') && !err.contains('\r'), "no terminal escapes in a pipe: {err:?}");

    // On a terminal: a bar, redrawn.
    let line = args(()).iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ");
    let tty = tokio::task::block_in_place(|| {
        Command::new("script").args(["-qec", &format!("'{}' {line}", bin().display()), "/dev/null"]).output().expect("util-linux script")
    });
    let screen = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{screen}\n{}", d.log());
    assert!(screen.contains("backfill 2 done"), "{screen}");
    assert!(screen.contains("\x1b[") && screen.contains('\r'), "a redrawn line: {screen:?}");
    assert!(screen.contains("[=") && screen.contains("rows (") && screen.contains("ETA"), "a bar with rows and ETA: {screen:?}");

    // verify: the source pass's progress, then the report on stdout.
    let verify = vec!["verify".to_string(), "-c".into(), cfg.display().to_string(), "--settle".into(), "30s".into()];
    let piped = tokio::task::block_in_place(|| Command::new(bin()).args(&verify).output().unwrap());
    let (out, err) = (String::from_utf8_lossy(&piped.stdout), String::from_utf8_lossy(&piped.stderr));
    assert!(piped.status.success(), "{out}\n{err}\n{}", d.log());
    assert!(out.contains("pipeline rows -> cache (redis): equal"), "{out}");
    assert!(err.contains("verify rows: 0 of ~20000 rows (0%)"), "{err}");
    assert!(err.contains("verify rows: source read, 20000 rows in"), "{err}");
    assert!(!err.contains('\x1b') && !err.contains('\r'), "no terminal escapes in a pipe: {err:?}");
    let line = verify.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ");
    let tty = tokio::task::block_in_place(|| {
        Command::new("script").args(["-qec", &format!("'{}' {line}", bin().display()), "/dev/null"]).output().expect("util-linux script")
    });
    let screen = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{screen}\n{}", d.log());
    assert!(
        screen.contains("(redis): equal") && screen.contains("\x1b[") && screen.contains("verify rows ["),
        "a bar, then the report: {screen:?}"
    );
}

/// The daemon's initial snapshot on a terminal: a bar for all tables below
/// the log lines (tracing-indicatif); in a pipe, log lines only, with the
/// rate and ETA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_initial_snapshot_draws_a_bar_on_a_terminal() {
    let db = "snapbar";
    let (pg, c) = cluster(db).await;
    c.batch_execute("CREATE TABLE big (id int PRIMARY KEY, v text); INSERT INTO big SELECT g, repeat('v', 200) FROM generate_series(1, 300000) g; ANALYZE big;")
        .await
        .unwrap();
    let dir = scratch();
    let yaml = file_config(&pg, db, db, &["public.big"], &dir.path().join("out.jsonl"))
        .replace("    snapshot: never\n", "    snapshot: initial\n");
    assert!(yaml.contains("snapshot: initial"), "{yaml}");
    let cfg = dir.path().join("snapbar.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    // `timeout` stops the daemon (SIGTERM, a clean stop) once the copy is long done.
    let run = format!("timeout -s TERM 15 '{}' run -c '{}'", bin().display(), cfg.display());
    let tty = tokio::task::block_in_place(|| Command::new("script").args(["-qec", &run, "/dev/null"]).output().expect("util-linux script"));
    let screen = String::from_utf8_lossy(&tty.stdout);
    assert!(screen.contains("snapshot started") && screen.contains("snapshot: tables copied"), "{screen}");
    assert!(screen.contains("snapshot [") && screen.contains("rows ("), "a bar below the log lines: {screen:?}");
    let out = dir.path().join("out.jsonl");
    assert_eq!(line_count(&out), 300_000, "every row copied");
}
