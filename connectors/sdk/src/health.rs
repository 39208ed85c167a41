//! Failures a sink retries inside itself, made visible to the daemon.
//!
//! Most sinks return a retriable error and let the runtime retry the batch;
//! the runtime then knows the sink is failing (`/readyz`, the console,
//! `status`). Some retry in place — the webhook sink resends one request,
//! the search sink resends a `_bulk` until it goes through — and the runtime
//! would only see a write that takes long. Such a sink calls [`retrying`]
//! on every retry: the daemon counts the sink as failing from the first
//! one until a write of it succeeds.
//!
//! The daemon runs each sink's build and worker inside [`scope`] (so a sink
//! need not know its own name) and installs the reporter with
//! [`report_to`]; outside the daemon (`verify`, tests) [`retrying`] does
//! nothing. A task the sink spawns keeps the scope through [`inherit`].

use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, OnceLock};

tokio::task_local! {
    static SINK: Arc<str>;
}

/// Where retries are reported: the sink's name and the error.
type Report = fn(&str, &str);

static REPORT: OnceLock<Report> = OnceLock::new();

/// Installs the reporter (once per process; later calls are ignored).
pub fn report_to(report: Report) {
    let _ = REPORT.set(report);
}

/// Runs `work` as sink `sink`'s: [`retrying`] inside it reports for `sink`.
pub fn scope<F: Future>(sink: Arc<str>, work: F) -> impl Future<Output = F::Output> {
    SINK.scope(sink, work)
}

/// `work` in the current sink's scope, if any: for tasks a sink spawns
/// (`tokio::spawn(health::inherit(lane))`), which do not inherit it.
pub fn inherit<F: Future>(work: F) -> impl Future<Output = F::Output> {
    let sink = SINK.try_with(Arc::clone).ok();
    async move {
        match sink {
            Some(sink) => SINK.scope(sink, work).await,
            None => work.await,
        }
    }
}

/// The current sink failed and retries in place after `error`.
pub fn retrying(error: &dyn Display) {
    if let Some(report) = REPORT.get() {
        let _ = SINK.try_with(|sink| report(sink, &error.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    static SEEN: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

    #[tokio::test]
    async fn retries_are_reported_for_the_scoped_sink_and_its_spawned_tasks() {
        report_to(|sink, error| SEEN.lock().unwrap().push((sink.into(), error.into())));
        retrying(&"outside any sink");
        scope(Arc::from("hook"), async {
            retrying(&"refused");
            tokio::spawn(inherit(async { retrying(&"in a lane") })).await.unwrap();
            tokio::spawn(async { retrying(&"lost: not inherited") }).await.unwrap();
        })
        .await;
        let seen = SEEN.lock().unwrap().clone();
        assert_eq!(seen, [("hook".into(), "refused".into()), ("hook".into(), "in a lane".into())]);
    }
}
