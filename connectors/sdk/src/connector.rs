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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::settings::lenient::Lenient;
use crate::sink::{BatchOutcome, InFlight, Sink, SinkError, SinkRecord};
use crate::verify::Verifier;

/// A boxed future, for the object-safe parts of the contract.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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
        Box::pin(async move {
            match self.build().await {
                Ok(mut sink) => match sink.check_boxed().await {
                    Ok(()) => vec![Check::ok("reachable and usable")],
                    Err(e) => vec![Check::failed("reachable and usable", e.to_string())],
                },
                Err(e) => vec![Check::failed("connect", e.to_string())],
            }
        })
    }

    /// Whether `verify` can read back route `route`'s state: `Err` says why
    /// not (the store holds no state, e.g. a stream or a file).
    fn verifiable(&self, route: usize) -> Result<(), String> {
        let _ = route;
        Err("this sink type holds no state pgfanout can read back".into())
    }

    /// Connects a [`Verifier`] for route `route` (only called when
    /// [`verifiable`](Self::verifiable) said yes).
    fn verifier(&self, route: usize) -> BoxFuture<'_, Result<Box<dyn Verifier>, SinkError>> {
        let why = self.verifiable(route).err().unwrap_or_default();
        Box::pin(async move { Err(SinkError::Permanent(why)) })
    }
}

/// The object-safe face of a [`Sink`], driven by the runtime.
pub trait DynSink: Send {
    fn write_boxed<'a>(&'a mut self, batch: &'a [SinkRecord]) -> BoxFuture<'a, BatchOutcome>;
    /// [`Sink::max_in_flight`].
    fn pipeline_depth(&self) -> usize;
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

/// How a [`TypedSink`] connects: its typed settings and mappings in, the
/// running sink out.
pub type ConnectFn<C, M> = for<'a> fn(&'a C, &'a [M]) -> BoxFuture<'a, Result<Box<dyn DynSink>, SinkError>>;

/// The usual [`ConfiguredSink`]: the typed settings and mappings that
/// [`parse_sink`] returned, and the connector's connect function.
pub struct TypedSink<C, M> {
    pub settings: C,
    pub mappings: Vec<M>,
    pub connect: ConnectFn<C, M>,
}

impl<C: Send + Sync, M: Send + Sync> ConfiguredSink for TypedSink<C, M> {
    fn build(&self) -> BoxFuture<'_, Result<Box<dyn DynSink>, SinkError>> {
        (self.connect)(&self.settings, &self.mappings)
    }
}

/// The usual [`Connector`]: typed settings `C` and mapping `M`, each with a
/// `validate()` returning (path, message) pairs, and a connect function. A
/// connector crate declares one as a `static`.
pub struct TypedConnector<C, M> {
    pub kind: &'static str,
    pub aliases: &'static [&'static str],
    pub validate_settings: fn(&C) -> Vec<(String, String)>,
    pub validate_mapping: fn(&M) -> Vec<(String, String)>,
    pub connect: ConnectFn<C, M>,
}

impl<C, M> Connector for TypedConnector<C, M>
where
    C: DeserializeOwned + Send + Sync + 'static,
    M: DeserializeOwned + Send + Sync + 'static,
{
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn aliases(&self) -> &'static [&'static str] {
        self.aliases
    }

    fn configure(&self, input: &SinkInput<'_>) -> Result<Box<dyn ConfiguredSink>, Vec<ConfigError>> {
        let (settings, mappings) = parse_sink(self.kind, input, self.validate_settings, self.validate_mapping)?;
        Ok(Box::new(TypedSink { settings, mappings, connect: self.connect }))
    }
}

/// Deserializes `value` as `T`, naming the failing field's dotted path, then
/// runs `validate` (errors as (path, message)). Numbers and booleans may be
/// strings (environment overrides are): see [`Lenient`].
pub fn parse<T: DeserializeOwned>(value: &Value, validate: impl Fn(&T) -> Vec<(String, String)>) -> Result<T, Vec<FieldError>> {
    match serde_path_to_error::deserialize::<_, T>(Lenient(value)) {
        Ok(t) => {
            let errors: Vec<FieldError> = validate(&t).into_iter().map(|(p, m)| FieldError::new(p, m)).collect();
            if errors.is_empty() {
                Ok(t)
            } else {
                Err(errors)
            }
        }
        Err(e) => {
            let at = e.path().to_string();
            let at = if at == "." { String::new() } else { at };
            Err(vec![FieldError::new(at, e.into_inner().to_string())])
        }
    }
}

/// The usual `configure`: typed settings `C` and one typed mapping `M` per
/// route, each validated, every error reported. A route without a mapping
/// is an error that says where to write it.
pub fn parse_sink<C: DeserializeOwned, M: DeserializeOwned>(
    kind: &str,
    input: &SinkInput<'_>,
    validate_settings: impl Fn(&C) -> Vec<(String, String)>,
    validate_mapping: impl Fn(&M) -> Vec<(String, String)>,
) -> Result<(C, Vec<M>), Vec<ConfigError>> {
    let mut errors = Vec::new();
    let settings = parse(input.settings, validate_settings).map_err(|e| errors.extend(e.into_iter().map(ConfigError::Settings))).ok();
    let mut mappings = Vec::with_capacity(input.mappings.len());
    for (route, mapping) in input.mappings.iter().enumerate() {
        match mapping {
            Some(v) => match parse(v, &validate_mapping) {
                Ok(m) => mappings.push(m),
                Err(e) => errors.extend(e.into_iter().map(|error| ConfigError::Mapping { route, error })),
            },
            None => errors.push(ConfigError::Mapping {
                route,
                error: FieldError::new(
                    "",
                    format!("this pipeline writes to {kind} sink {:?} but has no `{kind}:` mapping; add one", input.name),
                ),
            }),
        }
    }
    match settings {
        Some(s) if errors.is_empty() => Ok((s, mappings)),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct S {
        url: String,
        #[serde(default)]
        inner: Inner,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        #[serde(default, with = "crate::settings::option_duration")]
        timeout: Option<std::time::Duration>,
    }

    #[test]
    fn errors_name_the_dotted_path_and_come_all_at_once() {
        let settings = serde_json::json!({"url": "x", "inner": {"timeout": "ten"}});
        let good = serde_json::json!({"url": "y"});
        let mappings = [Some(&good), None];
        let input = SinkInput { name: "cache", settings: &settings, mappings: &mappings };
        let errors = parse_sink::<S, S>(
            "demo",
            &input,
            |_| Vec::new(),
            |s| {
                if s.url == "y" {
                    vec![("url".into(), "not y".into())]
                } else {
                    Vec::new()
                }
            },
        )
        .unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(matches!(&errors[0], ConfigError::Settings(e) if e.path == "inner.timeout" && e.message.contains("like 10s")));
        assert!(matches!(&errors[1], ConfigError::Mapping { route: 0, error } if error.path == "url"));
        assert!(matches!(&errors[2], ConfigError::Mapping { route: 1, error } if error.message.contains("`demo:` mapping")));
    }
}
