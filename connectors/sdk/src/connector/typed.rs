//! The usual [`Connector`], written once: a connector crate declares a
//! [`TypedConnector`] `static` naming its settings and mapping types, their
//! `validate()` functions and how to connect, plus the hooks it has (aliases,
//! doctor checks, a verifier). Everything the daemon needs around them lives
//! here, so every connector behaves alike: `serde_path_to_error`
//! deserialization with lenient numbers, every error at once with its
//! dotted path, a "no `<kind>:` mapping" error per route without one, route
//! checks before a verifier is asked for, the sink boxed for the runtime.
//!
//! ```ignore
//! pub static CONNECTOR: TypedConnector<MySettings, MyMapping> =
//!     TypedConnector::new("mystore", MySettings::validate, MyMapping::validate, |settings, mappings| {
//!         boxed_sink(MySink::connect(settings, mappings))
//!     })
//!     .with_aliases(&["myalias"])
//!     .with_verifier(verify::verifiable, |settings, mappings, route| Box::pin(verify::connect(settings, &mappings[route])));
//! ```
//!
//! Hooks are plain `fn` pointers (closures that capture nothing) so a
//! connector is a `static` built in a `const` context.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{connect_and_check, BoxFuture, Check, ConfigError, ConfiguredSink, Connector, DynSink, FieldError, SinkInput, NO_STATE};
use crate::settings::lenient::Lenient;
use crate::sink::{Sink, SinkError};
use crate::verify::Verifier;

/// How a connector connects: its typed settings and mappings (one per
/// route, in route order) in, the running sink out. See [`boxed_sink`].
pub type ConnectFn<C, M> = for<'a> fn(&'a C, &'a [M]) -> BoxFuture<'a, Result<Box<dyn DynSink>, SinkError>>;

/// A connector's own `doctor` checks, given its settings and mappings.
pub type DoctorFn<C, M> = for<'a> fn(&'a C, &'a [M]) -> BoxFuture<'a, Vec<Check>>;

/// Whether `verify` can read back what one mapping writes: `Err` says why
/// not (the mapping writes a log, or user statements).
pub type VerifiableFn<M> = fn(&M) -> Result<(), String>;

/// Connects a [`Verifier`] for route `route` of `mappings`. Called only for
/// a route that exists and whose mapping [`VerifiableFn`] accepted, so
/// `mappings[route]` is there.
pub type VerifierFn<C, M> = for<'a> fn(&'a C, &'a [M], usize) -> BoxFuture<'a, Result<Box<dyn Verifier>, SinkError>>;

/// A `validate()`: every problem as (dotted path below the value, message).
type ValidateFn<T> = fn(&T) -> Vec<(String, String)>;

/// Boxes a connector's own `connect` future the way [`ConnectFn`] returns
/// it: `|settings, mappings| boxed_sink(MySink::connect(settings, mappings))`.
pub fn boxed_sink<'a, S: Sink>(
    connect: impl Future<Output = Result<S, SinkError>> + Send + 'a,
) -> BoxFuture<'a, Result<Box<dyn DynSink>, SinkError>> {
    Box::pin(async move { Ok(Box::new(connect.await?) as Box<dyn DynSink>) })
}

/// The online half of a connector, which each configured sink keeps.
struct Hooks<C, M> {
    connect: ConnectFn<C, M>,
    /// `None`: connect and run the sink's own check.
    doctor: Option<DoctorFn<C, M>>,
    /// `None`: the store holds no state `verify` can read back.
    verify: Option<(VerifiableFn<M>, VerifierFn<C, M>)>,
}

// Not derived: a derive would ask `C: Copy, M: Copy`, and these are only
// function pointers.
impl<C, M> Clone for Hooks<C, M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C, M> Copy for Hooks<C, M> {}

/// The usual [`Connector`]: typed settings `C` and mapping `M`, each with a
/// `validate()` returning (path, message) pairs, a connect function and
/// optional hooks. A connector crate declares one as a `static` (see the
/// module docs); the `with_*` builders are `const`.
pub struct TypedConnector<C, M> {
    kind: &'static str,
    aliases: &'static [&'static str],
    takes_mapping: bool,
    /// A route without a mapping section reads as `{}` (every field's
    /// default) instead of an error.
    mapping_optional: bool,
    validate_settings: ValidateFn<C>,
    validate_mapping: ValidateFn<M>,
    hooks: Hooks<C, M>,
}

impl<C, M> TypedConnector<C, M> {
    /// `type: kind` (and mapping key `kind:`), settings `C` and one mapping
    /// `M` per route, each validated offline; `connect` builds the running
    /// sink. Without more hooks, `doctor` connects and runs the sink's own
    /// check, and `verify` skips the sink's routes.
    pub const fn new(
        kind: &'static str,
        validate_settings: ValidateFn<C>,
        validate_mapping: ValidateFn<M>,
        connect: ConnectFn<C, M>,
    ) -> Self {
        TypedConnector {
            kind,
            aliases: &[],
            takes_mapping: true,
            mapping_optional: false,
            validate_settings,
            validate_mapping,
            hooks: Hooks { connect, doctor: None, verify: None },
        }
    }

    /// Other `type:` names (and mapping keys) for the same store.
    pub const fn with_aliases(mut self, aliases: &'static [&'static str]) -> Self {
        self.aliases = aliases;
        self
    }

    /// Routes may leave the mapping section out: it then reads as `{}`, so
    /// every field of `M` needs a default.
    pub const fn with_optional_mapping(mut self) -> Self {
        self.mapping_optional = true;
        self
    }

    /// The store's own `doctor` checks, instead of connect-and-check.
    pub const fn with_doctor(mut self, doctor: DoctorFn<C, M>) -> Self {
        self.hooks.doctor = Some(doctor);
        self
    }

    /// `verify` reads the store back: `verifiable` says which mappings it
    /// can check, `verifier` connects one for a route.
    pub const fn with_verifier(mut self, verifiable: VerifiableFn<M>, verifier: VerifierFn<C, M>) -> Self {
        self.hooks.verify = Some((verifiable, verifier));
        self
    }
}

impl<C> TypedConnector<C, ()> {
    /// A connector whose pipelines take no mapping section (the file sink):
    /// only the settings are read; a mapping section is the daemon's error.
    pub const fn without_mapping(kind: &'static str, validate_settings: ValidateFn<C>, connect: ConnectFn<C, ()>) -> Self {
        let mut connector = TypedConnector::new(kind, validate_settings, no_problems, connect);
        connector.takes_mapping = false;
        connector
    }
}

fn no_problems(_: &()) -> Vec<(String, String)> {
    Vec::new()
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

    fn takes_mapping(&self) -> bool {
        self.takes_mapping
    }

    fn configure(&self, input: &SinkInput<'_>) -> Result<Box<dyn ConfiguredSink>, Vec<ConfigError>> {
        let (settings, mappings) = if self.takes_mapping && self.mapping_optional {
            let empty = Value::Object(Default::default());
            let filled: Vec<Option<&Value>> = input.mappings.iter().map(|m| Some(m.unwrap_or(&empty))).collect();
            let input = SinkInput { mappings: &filled, ..*input };
            parse_sink(self.kind, &input, self.validate_settings, self.validate_mapping)?
        } else if self.takes_mapping {
            parse_sink(self.kind, input, self.validate_settings, self.validate_mapping)?
        } else {
            let settings =
                parse(input.settings, self.validate_settings).map_err(|e| e.into_iter().map(ConfigError::Settings).collect::<Vec<_>>())?;
            (settings, Vec::new())
        };
        Ok(Box::new(TypedSink { settings, mappings, hooks: self.hooks }))
    }
}

/// The [`ConfiguredSink`] of a [`TypedConnector`]: the typed settings and
/// mappings [`parse_sink`] returned, and the connector's hooks.
pub struct TypedSink<C, M> {
    pub settings: C,
    /// One per route, in route order (empty for a connector without
    /// mappings).
    pub mappings: Vec<M>,
    hooks: Hooks<C, M>,
}

impl<C: Send + Sync, M: Send + Sync> ConfiguredSink for TypedSink<C, M> {
    fn build(&self) -> BoxFuture<'_, Result<Box<dyn DynSink>, SinkError>> {
        (self.hooks.connect)(&self.settings, &self.mappings)
    }

    fn doctor(&self) -> BoxFuture<'_, Vec<Check>> {
        match self.hooks.doctor {
            Some(doctor) => doctor(&self.settings, &self.mappings),
            None => connect_and_check(self.build()),
        }
    }

    fn verifiable(&self, route: usize) -> Result<(), String> {
        let Some((verifiable, _)) = self.hooks.verify else { return Err(NO_STATE.into()) };
        self.mappings.get(route).map_or_else(|| Err("no such route".into()), verifiable)
    }

    fn verifier(&self, route: usize) -> BoxFuture<'_, Result<Box<dyn Verifier>, SinkError>> {
        match self.hooks.verify {
            Some((_, verifier)) if route < self.mappings.len() => verifier(&self.settings, &self.mappings, route),
            Some(_) => Box::pin(async move { Err(SinkError::Permanent(format!("no route {route}"))) }),
            None => Box::pin(async { Err(SinkError::Permanent(NO_STATE.into())) }),
        }
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
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::sink::{BatchOutcome, SinkRecord};

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

    /// A sink that accepts everything; its check fails when told to.
    struct Nothing(bool);

    impl Sink for Nothing {
        async fn write(&mut self, _: &[SinkRecord]) -> BatchOutcome {
            Ok(Vec::new())
        }

        async fn check(&mut self) -> Result<(), SinkError> {
            if self.0 {
                Ok(())
            } else {
                Err(SinkError::Permanent("not usable".into()))
            }
        }
    }

    fn no_problems<T>(_: &T) -> Vec<(String, String)> {
        Vec::new()
    }

    fn url_is_x(s: &S) -> Vec<(String, String)> {
        if s.url == "x" {
            Vec::new()
        } else {
            vec![("url".into(), "must be x".into())]
        }
    }

    static PLAIN: TypedConnector<S, S> =
        TypedConnector::new("plain", url_is_x, no_problems, |s, _| boxed_sink(std::future::ready(Ok(Nothing(s.url == "x")))));

    static HOOKED: TypedConnector<S, S> =
        TypedConnector::new("hooked", no_problems, no_problems, |_, _| Box::pin(async { Err(SinkError::Retriable("down".into())) }))
            .with_aliases(&["alias"])
            .with_doctor(|_, mappings| Box::pin(std::future::ready(vec![Check::ok(format!("{} routes", mappings.len()))])))
            .with_verifier(
                |m| if m.url == "log" { Err("a log".into()) } else { Ok(()) },
                |_, _, route| Box::pin(async move { Err(SinkError::Permanent(format!("verifier {route}"))) }),
            );

    static NO_MAPPING: TypedConnector<S, ()> =
        TypedConnector::without_mapping("bare", url_is_x, |_, _| boxed_sink(std::future::ready(Ok(Nothing(false)))));

    /// Runs a future that never waits (these test hooks do not).
    fn now<T>(f: BoxFuture<'_, T>) -> T {
        let mut f = f;
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(t) => t,
            Poll::Pending => panic!("the test future waited"),
        }
    }

    fn configure(connector: &dyn Connector, mappings: &[Option<&Value>]) -> Box<dyn ConfiguredSink> {
        let settings = serde_json::json!({"url": "x"});
        let input = SinkInput { name: "s", settings: &settings, mappings };
        connector.configure(&input).map_err(|e| format!("{e:?}")).unwrap()
    }

    #[test]
    fn without_hooks_doctor_connects_and_checks_and_verify_skips() {
        let (state, log) = (serde_json::json!({"url": "x"}), serde_json::json!({"url": "log"}));
        assert_eq!((PLAIN.kind(), PLAIN.aliases(), PLAIN.takes_mapping()), ("plain", &[][..], true));
        let sink = configure(&PLAIN, &[Some(&state), Some(&log)]);
        assert_eq!(now(sink.doctor()), vec![Check::ok("reachable and usable")]);
        assert_eq!(sink.verifiable(0), Err(NO_STATE.into()));
        assert!(matches!(now(sink.verifier(0)), Err(SinkError::Permanent(m)) if m == NO_STATE));
        let bad = serde_json::json!({"url": "y"});
        let input = SinkInput { name: "s", settings: &bad, mappings: &[] };
        assert!(matches!(&PLAIN.configure(&input).err().unwrap()[..], [ConfigError::Settings(e)] if e.path == "url"));
    }

    #[test]
    fn hooks_are_used_and_routes_checked_first() {
        let (state, log) = (serde_json::json!({"url": "x"}), serde_json::json!({"url": "log"}));
        assert_eq!(HOOKED.aliases(), ["alias"]);
        let sink = configure(&HOOKED, &[Some(&state), Some(&log)]);
        assert_eq!(now(sink.doctor()), vec![Check::ok("2 routes")]);
        assert_eq!(sink.verifiable(0), Ok(()));
        assert_eq!(sink.verifiable(1), Err("a log".into()));
        assert_eq!(sink.verifiable(2), Err("no such route".into()));
        assert!(matches!(now(sink.verifier(1)), Err(SinkError::Permanent(m)) if m == "verifier 1"));
        assert!(matches!(now(sink.verifier(2)), Err(SinkError::Permanent(m)) if m == "no route 2"));
        assert!(matches!(now(sink.build()), Err(SinkError::Retriable(_))));
    }

    #[test]
    fn a_connector_without_mappings_reads_only_its_settings() {
        assert!(!NO_MAPPING.takes_mapping());
        let stray = serde_json::json!({"whatever": 1});
        let sink = configure(&NO_MAPPING, &[None, Some(&stray)]);
        assert_eq!(sink.verifiable(1), Err(NO_STATE.into()));
        assert_eq!(now(sink.doctor()), vec![Check::failed("reachable and usable", "not usable")]);
    }
}
