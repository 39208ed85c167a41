//! The connector contract: how the daemon learns about a store.
//!
//! Each connector crate exports one value implementing [`Connector`]
//! (`pgfanout_redis::CONNECTOR`, ...). The daemon keeps a plain list of them
//! (behind cargo features) and knows nothing else about any store:
//!
//! 1. [`Connector::kind`] names the `type:` it answers to (and
//!    [`Connector::aliases`]); a pipeline's mapping for the sink lives under
//!    that key (`redis: {...}`).
//! 2. [`Connector::configure`] deserializes and validates, offline and once,
//!    the sink's settings and every route's mapping into the connector's own
//!    typed structs, reporting every problem at once as [`ConfigError`]s with
//!    dotted paths. `pgfanout check` stops here.
//! 3. The [`ConfiguredSink`] it returns holds those typed settings: `run`
//!    calls [`ConfiguredSink::build`] to connect and get the running sink,
//!    `doctor` calls [`ConfiguredSink::doctor`] for the online checks.
//!
//! The running sink is a [`Sink`]; the guarantees it must keep are in
//! [`crate::sink`]'s docs. [`DynSink`] is the object-safe face the runtime
//! drives (implemented for every `Sink`).
//!
//! These traits are what the daemon sees. A connector crate does not
//! implement them by hand: it declares a [`TypedConnector`] (see [`typed`]),
//! which does the parsing, validation, route bookkeeping and boxing, and
//! names only what is the store's own (its settings and mapping types, how
//! to connect, and, where it has them, its doctor checks and verifier).

mod typed;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use crate::sink::{BatchOutcome, InFlight, Sink, SinkError, SinkRecord};
use crate::verify::Verifier;

pub use typed::{boxed_sink, parse, parse_sink, ConnectFn, DoctorFn, TypedConnector, TypedSink, VerifiableFn, VerifierFn};

/// A boxed future, for the object-safe parts of the contract.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a sink checks before it connects, when it is built without the
/// connector (tests, the bench): its settings' first problem (from their
/// `validate()`), as `<store> sink: <path>: <message>`, else every route's
/// mapping compiled, or the first that does not compile as `<store> mapping
/// of route <i>: <error>`. Either is a permanent error.
pub fn compile_routes<M, C, E: std::fmt::Display>(
    store: &str,
    problems: Vec<(String, String)>,
    routes: &[M],
    compile: impl Fn(&M) -> Result<C, E>,
) -> Result<Vec<C>, String> {
    if let Some((path, msg)) = problems.into_iter().next() {
        return Err(format!("{store} sink: {path}: {msg}"));
    }
    routes.iter().enumerate().map(|(i, m)| compile(m).map_err(|e| format!("{store} mapping of route {i}: {e}"))).collect()
}

/// One configuration problem: the dotted path below the part that was given
/// (empty for the part itself) and what is wrong and expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { path: path.into(), message: message.into() }
    }
}

/// Where a problem is: in the sink's settings (`sinks.<name>...`) or in the
/// mapping of one of its routes (`pipelines[i].<kind>...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    Settings(FieldError),
    /// `route` indexes [`SinkInput::mappings`].
    Mapping {
        route: usize,
        error: FieldError,
    },
}

/// What the daemon hands a connector to configure one sink.
#[derive(Debug, Clone, Copy)]
pub struct SinkInput<'a> {
    /// The sink's name under `sinks:` (for messages).
    pub name: &'a str,
    /// The sink's settings, without `type`.
    pub settings: &'a Value,
    /// Per route (each pipeline writing to this sink, in file order): its
    /// mapping section under the connector's key, `None` when absent.
    pub mappings: &'a [Option<&'a Value>],
}

/// A store type. See the module docs.
pub trait Connector: Sync {
    /// The `type:` value this connector answers to, e.g. `"redis"`; also the
    /// key of a pipeline's mapping for it.
    fn kind(&self) -> &'static str;

    /// Other names for the same `type:` (e.g. `opensearch`).
    fn aliases(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether pipelines writing to such a sink take a mapping section.
    /// `false` (the file sink) makes a mapping section an error.
    fn takes_mapping(&self) -> bool {
        true
    }

    /// Parses and validates, without I/O, the settings and every mapping,
    /// returning every problem at once.
    fn configure(&self, input: &SinkInput<'_>) -> Result<Box<dyn ConfiguredSink>, Vec<ConfigError>>;
}

/// One online check made by `doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked ("server reachable", "index products").
    pub what: String,
    /// `None` when it passed, else the problem and its fix.
    pub problem: Option<String>,
}

impl Check {
    pub fn ok(what: impl Into<String>) -> Self {
        Check { what: what.into(), problem: None }
    }

    pub fn failed(what: impl Into<String>, problem: impl Into<String>) -> Self {
        Check { what: what.into(), problem: Some(problem.into()) }
    }
}

/// A sink whose configuration was parsed and validated: ready to connect.
pub trait ConfiguredSink: Send + Sync {
    /// Connects and returns the running sink. Unreachable stores are
    /// [`SinkError::Retriable`] (the daemon retries); settings the store
    /// refuses (bad credentials, missing keyspace) are
    /// [`SinkError::Permanent`] with the fix in the message.
    fn build(&self) -> BoxFuture<'_, Result<Box<dyn DynSink>, SinkError>>;

    /// The online checks of `doctor`. The default connects and runs the
    /// sink's own [`Sink::check`].
    fn doctor(&self) -> BoxFuture<'_, Vec<Check>> {
        connect_and_check(self.build())
    }

    /// Whether `verify` can read back route `route`'s state: `Err` says why
    /// not (the store holds no state, e.g. a stream or a file).
    fn verifiable(&self, route: usize) -> Result<(), String> {
        let _ = route;
        Err(NO_STATE.into())
    }

    /// Connects a [`Verifier`] for route `route` (only called when
    /// [`verifiable`](Self::verifiable) said yes).
    fn verifier(&self, route: usize) -> BoxFuture<'_, Result<Box<dyn Verifier>, SinkError>> {
        let why = self.verifiable(route).err().unwrap_or_default();
        Box::pin(async move { Err(SinkError::Permanent(why)) })
    }
}

/// Why a sink without a verifier is skipped by `verify`.
const NO_STATE: &str = "this sink type holds no state pgfanout can read back";

/// The default `doctor`: connect (`build`), then the sink's own
/// [`Sink::check`].
fn connect_and_check(build: BoxFuture<'_, Result<Box<dyn DynSink>, SinkError>>) -> BoxFuture<'_, Vec<Check>> {
    Box::pin(async move {
        match build.await {
            Ok(mut sink) => match sink.check_boxed().await {
                Ok(()) => vec![Check::ok("reachable and usable")],
                Err(e) => vec![Check::failed("reachable and usable", e.to_string())],
            },
            Err(e) => vec![Check::failed("connect", e.to_string())],
        }
    })
}

/// `error`, and what to do about it when it is a certificate problem.
pub fn with_fix(error: String) -> String {
    match crate::settings::certificate_fix(&error) {
        Some(fix) => format!("{error}; {fix}"),
        None => error,
    }
}

/// The object-safe face of a [`Sink`], driven by the runtime.
pub trait DynSink: Send {
    fn write_boxed<'a>(&'a mut self, batch: &'a [SinkRecord]) -> BoxFuture<'a, BatchOutcome>;
    /// [`Sink::max_in_flight`].
    fn pipeline_depth(&self) -> usize;
    /// [`Sink::whole_transactions`].
    fn whole_transactions(&self) -> bool;
    fn submit_boxed(&mut self, batch: Arc<[SinkRecord]>) -> BoxFuture<'_, Result<InFlight, SinkError>>;
    fn check_boxed(&mut self) -> BoxFuture<'_, Result<(), SinkError>>;
    fn close_boxed(&mut self) -> BoxFuture<'_, Result<(), SinkError>>;
}

impl<S: Sink> DynSink for S {
    fn write_boxed<'a>(&'a mut self, batch: &'a [SinkRecord]) -> BoxFuture<'a, BatchOutcome> {
        Box::pin(self.write(batch))
    }

    fn pipeline_depth(&self) -> usize {
        self.max_in_flight().max(1)
    }

    fn whole_transactions(&self) -> bool {
        Sink::whole_transactions(self)
    }

    fn submit_boxed(&mut self, batch: Arc<[SinkRecord]>) -> BoxFuture<'_, Result<InFlight, SinkError>> {
        Box::pin(self.submit(batch))
    }

    fn check_boxed(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(self.check())
    }

    fn close_boxed(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(self.close())
    }
}
