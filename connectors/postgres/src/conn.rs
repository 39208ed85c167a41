//! Connection options and plain SQL connections.
//!
//! Both kinds of connection the source opens (the replication connection in
//! [`crate::replication`] and the tokio-postgres connections used for catalog
//! queries, slot management and snapshots) are built from one
//! [`PgConnectOptions`], so they reach the same server with the same TLS
//! settings and the same session settings. The session settings pin what the
//! value decoder depends on (ISO dates, UTC, hex bytea, round-trip floats)
//! whatever the server or role defaults are.
//!
//! The password is a secret: it never appears in `Debug` output, in
//! [`PgConnectOptions::redacted`] or in any error built here.

use std::path::PathBuf;
use std::time::Duration;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::error::SourceError;

/// How TLS is negotiated, with libpq's meaning for each mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS if the server offers it (no certificate verification), plain otherwise.
    Prefer,
    /// TLS required; the certificate is not verified unless a CA file is given
    /// (then it behaves like `VerifyCa`), as libpq does.
    Require,
    /// TLS with the chain verified against the CA file (or the webpki roots),
    /// host name not checked.
    VerifyCa,
    /// TLS with chain and host name verified.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling (`verify-full`...).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(s: &str) -> Result<SslMode, SourceError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            // libpq's `allow` tries plain first; prefer is the closest safe choice.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(SourceError::permanent(format!(
                    "invalid sslmode {other:?} in the PostgreSQL URL: expected disable, prefer, require, verify-ca or verify-full"
                )))
            }
        })
    }
}

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address.
    Tcp(String),
    /// A directory holding the server's `.s.PGSQL.<port>` socket (or the
    /// socket file itself).
    Unix(PathBuf),
}

/// PEM files for TLS: the CA bundle that verifies the server, and an
/// optional client certificate and key (the settings every store's `tls:`
/// takes; `key_password` and `insecure` are not used here: `sslmode` says
/// what is verified).
pub use pgfanout_sdk::settings::{Secret, TlsFiles};

/// Which of several listed hosts a connection may use (libpq's
/// `target_session_attrs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TargetSessionAttrs {
    /// The first that accepts the connection.
    #[default]
    Any,
    /// The first that accepts writes (`transaction_read_only` off): after a
    /// failover, the promoted standby. `primary` is taken as this too.
    ReadWrite,
}

/// Everything needed to open a connection to the source database. `Debug`
/// prints no password.
#[derive(Clone, Debug)]
pub struct PgConnectOptions {
    pub host: Host,
    pub port: u16,
    /// More hosts (libpq's `host1:port1,host2:port2` list), tried in order
    /// after `host` (see [`PgConnectOptions::per_host`]).
    pub other_hosts: Vec<(Host, u16)>,
    pub target_session_attrs: TargetSessionAttrs,
    pub user: String,
    pub password: Option<Secret>,
    pub dbname: String,
    pub sslmode: SslMode,
    pub tls: TlsFiles,
    pub application_name: String,
    pub connect_timeout: Duration,
    /// How long sent data may stay unacknowledged before an SQL connection
    /// is given up (`TCP_USER_TIMEOUT`; libpq's `tcp_user_timeout`, in
    /// milliseconds in the URL). With TCP keepalives after 30 s idle (then
    /// every 10 s, 3 probes), a silent link under a catalog query, the
    /// heartbeat or a sampler fails within about a minute instead of hanging.
    pub tcp_user_timeout: Duration,
    /// The primary, when these options name a physical standby pgfanout
    /// decodes from (PostgreSQL 16+, `source.postgres.primary_url`): the
    /// slot, the stream and the initial snapshot stay on the standby, and
    /// everything pgfanout writes goes to the primary ([`Self::writer`]).
    pub primary: Option<Box<PgConnectOptions>>,
}

/// Session settings applied to every connection through the startup
/// `options` parameter (`-c name=value`). The value decoder relies on them.
pub const SESSION_SETTINGS: &[(&str, &str)] =
    &[("DateStyle", "ISO"), ("TimeZone", "UTC"), ("IntervalStyle", "postgres"), ("extra_float_digits", "3"), ("bytea_output", "hex")];

/// Default `application_name`, visible in `pg_stat_activity` and
/// `pg_stat_replication`.
pub const DEFAULT_APPLICATION_NAME: &str = "pgfanout";

/// Default connect timeout (TCP connect, TLS and authentication together).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default [`PgConnectOptions::tcp_user_timeout`].
pub const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// Characters percent-encoded in [`PgConnectOptions::redacted`].
const URL_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

impl PgConnectOptions {
    /// Parses `postgres://user:pass@host:port/db?param=value...` (or
    /// `postgresql://`). Components are percent-decoded. Defaults: port 5432,
    /// user `postgres`, database = user, sslmode `prefer`, host `localhost`,
    /// application_name `pgfanout`, connect_timeout 10 s.
    ///
    /// Query parameters: `sslmode`, `host` (a path starting with `/` selects
    /// a Unix socket directory), `port`, `user`, `password`, `dbname`,
    /// `application_name`, `connect_timeout` (seconds), `tcp_user_timeout`
    /// (milliseconds, default 60000; 0: the system's), and `sslrootcert`,
    /// `sslcert`, `sslkey` (override the matching [`TlsFiles`] entry).
    ///
    /// Errors are definite ([`SourceError::is_permanent`]) and never contain the password.
    /// Where pgfanout's own writes go (publication, the `pgfanout` schema,
    /// heartbeats, backfill watermarks): the primary when these options
    /// name a standby, else the same server.
    pub fn writer(&self) -> &PgConnectOptions {
        self.primary.as_deref().unwrap_or(self)
    }

    pub fn from_url(url: &str, tls: TlsFiles) -> Result<Self, SourceError> {
        let bad = |what: &str| SourceError::permanent(format!("invalid PostgreSQL URL: {what}"));
        let (url, more_hosts) = split_host_list(url);
        let parsed = url::Url::parse(&with_placeholder_host(&url)).map_err(|e| bad(&e.to_string()))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(bad(&format!("scheme must be postgres:// or postgresql://, not {}://", parsed.scheme())));
        }
        let decode = |s: &str, what: &str| -> Result<String, SourceError> {
            percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| bad(&format!("{what} is not valid UTF-8 once percent-decoded")))
        };

        let mut opts = PgConnectOptions {
            host: Host::Tcp("localhost".into()),
            port: 5432,
            other_hosts: Vec::new(),
            target_session_attrs: TargetSessionAttrs::Any,
            user: "postgres".into(),
            password: None,
            dbname: String::new(),
            sslmode: SslMode::Prefer,
            tls,
            application_name: DEFAULT_APPLICATION_NAME.into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            tcp_user_timeout: DEFAULT_TCP_USER_TIMEOUT,
            primary: None,
        };
        match parsed.host_str() {
            Some(h) if !h.is_empty() => {
                let h = decode(h, "host")?;
                // url keeps IPv6 brackets; connect() wants the bare address.
                let h = h.strip_prefix('[').and_then(|x| x.strip_suffix(']')).map(str::to_string).unwrap_or(h);
                opts.host = if h.starts_with('/') { Host::Unix(PathBuf::from(h)) } else { Host::Tcp(h) };
            }
            _ => {}
        }
        if let Some(p) = parsed.port() {
            opts.port = p;
        }
        if !parsed.username().is_empty() {
            opts.user = decode(parsed.username(), "user name")?;
        }
        if let Some(p) = parsed.password() {
            opts.password = Some(Secret::new(decode(p, "password")?));
        }
        let path = parsed.path().trim_start_matches('/');
        if !path.is_empty() {
            opts.dbname = decode(path, "database name")?;
        }
        // query_pairs() percent-decodes and maps '+' to ' '.
        for (key, value) in parsed.query_pairs() {
            let value = value.into_owned();
            match key.as_ref() {
                "sslmode" => opts.sslmode = SslMode::parse(&value)?,
                "host" if value.starts_with('/') => opts.host = Host::Unix(PathBuf::from(value)),
                "host" => opts.host = Host::Tcp(value),
                "port" => opts.port = value.parse().map_err(|_| bad(&format!("port {value:?} is not a number")))?,
                "user" => opts.user = value,
                "password" => opts.password = Some(Secret::new(value)),
                "dbname" => opts.dbname = value,
                "application_name" => opts.application_name = value,
                "connect_timeout" => {
                    let secs: u64 = value.parse().map_err(|_| bad(&format!("connect_timeout {value:?} is not a number of seconds")))?;
                    // libpq: 0 means wait forever; keep a bound anyway.
                    opts.connect_timeout = if secs == 0 { Duration::from_secs(3600) } else { Duration::from_secs(secs.max(2)) };
                }
                "tcp_user_timeout" => {
                    let ms: u64 = value.parse().map_err(|_| bad(&format!("tcp_user_timeout {value:?} is not a number of milliseconds")))?;
                    // libpq: 0 is the system default (no bound).
                    opts.tcp_user_timeout = Duration::from_millis(ms);
                }
                "target_session_attrs" => {
                    opts.target_session_attrs = match value.as_str() {
                        "any" => TargetSessionAttrs::Any,
                        "read-write" | "primary" => TargetSessionAttrs::ReadWrite,
                        other => return Err(bad(&format!("target_session_attrs {other:?} is not supported: use any or read-write"))),
                    }
                }
                "sslrootcert" => opts.tls.ca_file = Some(PathBuf::from(value)),
                "sslcert" => opts.tls.cert_file = Some(PathBuf::from(value)),
                "sslkey" => opts.tls.key_file = Some(PathBuf::from(value)),
                other => return Err(bad(&format!("unknown parameter {other:?}"))),
            }
        }
        for entry in more_hosts {
            let (h, p) = split_host_port(&entry).map_err(|e| bad(&e))?;
            let h = decode(&h, "host")?;
            if h.is_empty() {
                return Err(bad("an empty host in the host list"));
            }
            opts.other_hosts.push((if h.starts_with('/') { Host::Unix(PathBuf::from(h)) } else { Host::Tcp(h) }, p));
        }
        if opts.dbname.is_empty() {
            opts.dbname = opts.user.clone();
        }
        if opts.user.is_empty() {
            return Err(bad("the user name is empty"));
        }
        Ok(opts)
    }

    /// One set of options per listed host, in the order they are tried.
    pub fn per_host(&self) -> Vec<PgConnectOptions> {
        std::iter::once((self.host.clone(), self.port))
            .chain(self.other_hosts.iter().cloned())
            .map(|(host, port)| PgConnectOptions { host, port, other_hosts: Vec::new(), ..self.clone() })
            .collect()
    }

    /// The options as a URL with the password replaced by `***`, for logs.
    pub fn redacted(&self) -> String {
        let enc = |s: &str| utf8_percent_encode(s, URL_COMPONENT).to_string();
        let mut out = format!("postgres://{}", enc(&self.user));
        if self.password.is_some() {
            out.push_str(":***");
        }
        out.push('@');
        let mut params = vec![format!("sslmode={}", self.sslmode.as_str())];
        match &self.host {
            Host::Tcp(h) if h.contains(':') => out.push_str(&format!("[{h}]:{}", self.port)),
            Host::Tcp(h) => out.push_str(&format!("{}:{}", enc(h), self.port)),
            Host::Unix(dir) => {
                out.push_str(&format!(":{}", self.port));
                params.push(format!("host={}", enc(&dir.display().to_string())));
            }
        }
        for (host, port) in &self.other_hosts {
            match host {
                Host::Tcp(h) if h.contains(':') => out.push_str(&format!(",[{h}]:{port}")),
                Host::Tcp(h) => out.push_str(&format!(",{}:{port}", enc(h))),
                Host::Unix(dir) => out.push_str(&format!(",{}:{port}", enc(&dir.display().to_string()))),
            }
        }
        if self.target_session_attrs == TargetSessionAttrs::ReadWrite {
            params.push("target_session_attrs=read-write".into());
        }
        out.push('/');
        out.push_str(&enc(&self.dbname));
        out.push('?');
        out.push_str(&params.join("&"));
        out
    }

    /// The startup `options` value: `-c name=value` for every
    /// [`SESSION_SETTINGS`] entry.
    pub fn startup_options() -> String {
        SESSION_SETTINGS.iter().map(|(k, v)| format!("-c {k}={v}")).collect::<Vec<_>>().join(" ")
    }

    /// `host:port` or the socket path, for error messages.
    pub fn endpoint(&self) -> String {
        match &self.host {
            Host::Tcp(h) if h.contains(':') => format!("[{h}]:{}", self.port),
            Host::Tcp(h) => format!("{h}:{}", self.port),
            Host::Unix(dir) => unix_socket_path(dir, self.port).display().to_string(),
        }
    }
}

/// libpq's host list (`postgres://u@h1:5432,h2:5433/db`): the URL with
/// only the first host, and the others as written (`host[:port]`).
fn split_host_list(url: &str) -> (String, Vec<String>) {
    let Some(scheme_end) = url.find("://") else { return (url.to_string(), Vec::new()) };
    let rest = &url[scheme_end + 3..];
    let authority_len = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let host_start = authority.rfind('@').map(|i| i + 1).unwrap_or(0);
    let hosts = &authority[host_start..];
    if !hosts.contains(',') {
        return (url.to_string(), Vec::new());
    }
    let mut entries = hosts.split(',');
    let first = entries.next().unwrap_or_default();
    let others = entries.map(str::to_string).collect();
    let at = scheme_end + 3 + host_start;
    (format!("{}{}{}", &url[..at], first, &rest[authority_len..]), others)
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` (port 5432 when absent).
fn split_host_port(entry: &str) -> Result<(String, u16), String> {
    let port = |p: &str| p.parse::<u16>().map_err(|_| format!("port {p:?} of host {entry:?} is not a number"));
    if let Some(v6) = entry.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| format!("unclosed [ in host {entry:?}"))?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((h.to_string(), port(p)?)),
            None if after.is_empty() => Ok((h.to_string(), 5432)),
            None => Err(format!("unexpected {after:?} after host {entry:?}")),
        };
    }
    match entry.split_once(':') {
        Some((h, p)) => Ok((h.to_string(), port(p)?)),
        None => Ok((entry.to_string(), 5432)),
    }
}

/// libpq accepts an empty host (`postgres://user@/db?host=/run/pg`,
/// `postgres://user@:5433/db`) but the `url` crate does not: put the
/// default host name in, which a `host=` parameter then overrides.
fn with_placeholder_host(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(scheme_end) = url.find("://") else { return url.into() };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host_start = authority.rfind('@').map(|i| i + 1).unwrap_or(0);
    let host_part = &authority[host_start..];
    if host_part.is_empty() || host_part.starts_with(':') {
        let at = scheme_end + 3 + host_start;
        format!("{}localhost{}", &url[..at], &url[at..]).into()
    } else {
        url.into()
    }
}

/// The socket file for a Unix `host`: the path itself when it already names
/// a `.s.PGSQL.*` file, else `<dir>/.s.PGSQL.<port>`.
pub fn unix_socket_path(dir: &std::path::Path, port: u16) -> PathBuf {
    let is_socket_file = dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".s.PGSQL."));
    if is_socket_file {
        dir.to_path_buf()
    } else {
        dir.join(format!(".s.PGSQL.{port}"))
    }
}

/// Opens a normal SQL connection (tokio-postgres) with the same host, TLS
/// settings and [`SESSION_SETTINGS`] as the replication connection, and
/// spawns its connection task. Errors are classified like
/// [`crate::replication::ReplicationClient::connect`]'s: bad credentials or
/// database -> Permanent, unreachable server -> Transient.
///
/// With several hosts, each is tried in order; with
/// `target_session_attrs=read-write` a host that takes no writes (a
/// standby) is passed over.
pub async fn connect_sql(opts: &PgConnectOptions) -> Result<tokio_postgres::Client, SourceError> {
    let mut last = None;
    for one in opts.per_host() {
        let client = match connect_sql_one(&one).await {
            Ok(c) => c,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        if opts.target_session_attrs == TargetSessionAttrs::ReadWrite {
            let read_only: String = client.query_one("SHOW transaction_read_only", &[]).await?.try_get(0)?;
            if read_only == "on" {
                last = Some(SourceError::transient(format!("{} takes no writes (target_session_attrs=read-write)", one.endpoint())));
                continue;
            }
        }
        return Ok(client);
    }
    Err(last.unwrap_or_else(|| SourceError::transient("no host to connect to")))
}

async fn connect_sql_one(opts: &PgConnectOptions) -> Result<tokio_postgres::Client, SourceError> {
    use tokio_postgres::config::SslMode as TpSslMode;

    let mut cfg = tokio_postgres::Config::new();
    cfg.user(&opts.user)
        .dbname(&opts.dbname)
        .port(opts.port)
        .application_name(&opts.application_name)
        .options(PgConnectOptions::startup_options())
        .connect_timeout(opts.connect_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3);
    if !opts.tcp_user_timeout.is_zero() {
        cfg.tcp_user_timeout(opts.tcp_user_timeout);
    }
    if let Some(p) = &opts.password {
        cfg.password(p.expose());
    }
    match &opts.host {
        Host::Tcp(h) => {
            cfg.host(h);
            cfg.ssl_mode(match opts.sslmode {
                SslMode::Disable => TpSslMode::Disable,
                SslMode::Prefer => TpSslMode::Prefer,
                // Verification is done by the rustls config built below.
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => TpSslMode::Require,
            });
        }
        Host::Unix(dir) => {
            // PostgreSQL has no TLS on Unix sockets (libpq ignores sslmode there).
            let path = unix_socket_path(dir, opts.port);
            let dir =
                if path.as_path() == dir.as_path() { path.parent().map(|p| p.to_path_buf()).unwrap_or_default() } else { dir.clone() };
            cfg.host_path(dir);
            cfg.ssl_mode(TpSslMode::Disable);
        }
    }
    match opts.host {
        // tokio-postgres asks the TLS connector for a server name even when it
        // will not use TLS, and a socket path is not one.
        Host::Unix(_) => spawn_connection(opts, &cfg, tokio_postgres::NoTls).await,
        Host::Tcp(_) => {
            let tls = crate::replication::tls::client_config(opts.sslmode, &opts.tls)?;
            spawn_connection(opts, &cfg, tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone())).await
        }
    }
}

async fn spawn_connection<T>(opts: &PgConnectOptions, cfg: &tokio_postgres::Config, tls: T) -> Result<tokio_postgres::Client, SourceError>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + Send + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as tokio_postgres::tls::TlsConnect<tokio_postgres::Socket>>::Future: Send,
{
    let (client, connection) = match tokio::time::timeout(opts.connect_timeout, cfg.connect(tls)).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return Err(crate::replication::classify_connect_error(opts, e)),
        Err(_) => {
            return Err(SourceError::transient(format!(
                "timed out after {:?} connecting to PostgreSQL at {}",
                opts.connect_timeout,
                opts.endpoint()
            )))
        }
    };
    tokio::spawn(async move {
        // Notices are read here rather than left to tokio-postgres, which
        // logs every one at INFO: most are pgfanout's own idempotent DDL
        // (`schema "pgfanout" already exists, skipping`). WARNING and above
        // stay visible; NOTICE, INFO, LOG and DEBUG go to debug.
        let mut connection = connection;
        loop {
            match futures_util::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notice(n))) => match n.severity() {
                    "WARNING" => tracing::warn!(code = n.code().code(), "PostgreSQL: {}", n.message()),
                    _ => tracing::debug!(severity = n.severity(), code = n.code().code(), "PostgreSQL: {}", n.message()),
                },
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "SQL connection closed");
                    break;
                }
                None => break,
            }
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> PgConnectOptions {
        PgConnectOptions::from_url(url, TlsFiles::default()).expect("valid url")
    }

    #[test]
    fn host_lists_and_target_session_attrs() {
        let o = parse("postgres://u:p%40ss@db1:5432,db2:5433,[::1]:6543,db4/shop?target_session_attrs=read-write&sslmode=disable");
        assert_eq!((o.host.clone(), o.port), (Host::Tcp("db1".into()), 5432));
        assert_eq!(o.other_hosts, vec![(Host::Tcp("db2".into()), 5433), (Host::Tcp("::1".into()), 6543), (Host::Tcp("db4".into()), 5432)]);
        assert_eq!(o.target_session_attrs, TargetSessionAttrs::ReadWrite);
        assert_eq!(o.password.as_ref().map(|p| p.expose().to_string()), Some("p@ss".to_string()));
        assert_eq!((o.dbname.as_str(), o.sslmode), ("shop", SslMode::Disable));
        let each: Vec<String> = o.per_host().iter().map(|h| h.endpoint()).collect();
        assert_eq!(each, ["db1:5432", "db2:5433", "[::1]:6543", "db4:5432"]);
        assert!(o.per_host().iter().all(|h| h.other_hosts.is_empty() && h.dbname == "shop"));
        assert_eq!(
            o.redacted(),
            "postgres://u:***@db1:5432,db2:5433,[::1]:6543,db4:5432/shop?sslmode=disable&target_session_attrs=read-write"
        );
        assert_eq!(parse("postgres://u@h1,h2:7/db").other_hosts, vec![(Host::Tcp("h2".into()), 7)]);
        assert!(PgConnectOptions::from_url("postgres://u@h1,h2:x/db", TlsFiles::default()).is_err());
        assert!(PgConnectOptions::from_url("postgres://u@h1/db?target_session_attrs=standby", TlsFiles::default()).is_err());
        assert!(parse("postgres://u@h1/db").other_hosts.is_empty());
    }

    #[test]
    fn full_url() {
        let o = parse("postgres://rep:secret@db.example.com:6543/shop?sslmode=verify-full&application_name=cdc&connect_timeout=7");
        assert_eq!(o.host, Host::Tcp("db.example.com".into()));
        assert_eq!(o.port, 6543);
        assert_eq!(o.user, "rep");
        assert_eq!(o.password.as_ref().map(Secret::expose), Some("secret"));
        assert_eq!(o.dbname, "shop");
        assert_eq!(o.sslmode, SslMode::VerifyFull);
        assert_eq!(o.application_name, "cdc");
        assert_eq!(o.connect_timeout, Duration::from_secs(7));
        assert_eq!(o.tcp_user_timeout, DEFAULT_TCP_USER_TIMEOUT);
        assert_eq!(parse("postgres://h/db?tcp_user_timeout=15000").tcp_user_timeout, Duration::from_secs(15));
    }

    #[test]
    fn defaults_and_postgresql_scheme() {
        let o = parse("postgresql://localhost");
        assert_eq!(o.port, 5432);
        assert_eq!(o.user, "postgres");
        assert_eq!(o.dbname, "postgres");
        assert!(o.password.is_none());
        assert_eq!(o.sslmode, SslMode::Prefer);
        assert_eq!(o.application_name, DEFAULT_APPLICATION_NAME);
        let o = parse("postgres://alice@h/");
        assert_eq!(o.dbname, "alice");
    }

    #[test]
    fn every_sslmode() {
        for (s, m) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            assert_eq!(parse(&format!("postgres://u@h/d?sslmode={s}")).sslmode, m);
            assert_eq!(m.as_str(), s);
        }
        let e = PgConnectOptions::from_url("postgres://u:pw@h/d?sslmode=sometimes", TlsFiles::default()).unwrap_err();
        assert!(!e.is_retriable());
        assert!(e.to_string().contains("sometimes"));
    }

    #[test]
    fn unix_host() {
        let o = parse("postgres://u@/db?host=/var/run/postgresql&port=5433");
        assert_eq!(o.host, Host::Unix("/var/run/postgresql".into()));
        assert_eq!(o.port, 5433);
        assert_eq!(o.endpoint(), "/var/run/postgresql/.s.PGSQL.5433");
        let o = parse("postgres://u@%2Ftmp%2Fpg/db");
        assert_eq!(o.host, Host::Unix("/tmp/pg".into()));
        assert_eq!(unix_socket_path(std::path::Path::new("/x/.s.PGSQL.1"), 5432), PathBuf::from("/x/.s.PGSQL.1"));
    }

    #[test]
    fn percent_encoded_credentials() {
        let o = parse("postgres://us%40er:p%40ss%3Aw%2Fo%23rd@h:1/my%20db");
        assert_eq!(o.user, "us@er");
        assert_eq!(o.password.as_ref().map(Secret::expose), Some("p@ss:w/o#rd"));
        assert_eq!(o.dbname, "my db");
        let o = parse("postgres://u@h/d?password=a%26b");
        assert_eq!(o.password.as_ref().map(Secret::expose), Some("a&b"));
    }

    #[test]
    fn ipv6_host() {
        let o = parse("postgres://u@[::1]:5555/d");
        assert_eq!(o.host, Host::Tcp("::1".into()));
        assert_eq!(o.endpoint(), "[::1]:5555");
    }

    #[test]
    fn redaction_never_shows_password() {
        let o = parse("postgres://rep:Sup3rS3cret%21@h:5432/shop?sslmode=require");
        let r = o.redacted();
        assert!(!r.contains("Sup3rS3cret"), "{r}");
        assert_eq!(r, "postgres://rep:***@h:5432/shop?sslmode=require");
        let dbg = format!("{o:?}");
        assert!(!dbg.contains("Sup3rS3cret"), "{dbg}");
        assert!(dbg.contains("***"));
        let o = parse("postgres://rep@/shop?host=/tmp/s");
        assert_eq!(o.redacted(), "postgres://rep@:5432/shop?sslmode=prefer&host=%2Ftmp%2Fs");
    }

    #[test]
    fn errors_never_contain_password() {
        for url in [
            "mysql://u:hunter2@h/d",
            "postgres://u:hunter2@h/d?bogus=1",
            "postgres://u:hunter2@h:99999/d",
            "postgres://u:hunter2@h/d?port=x",
            "not a url hunter2",
        ] {
            let e = PgConnectOptions::from_url(url, TlsFiles::default()).unwrap_err();
            assert!(!e.is_retriable());
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn tls_file_params() {
        let o = parse("postgres://u@h/d?sslrootcert=/ca.pem&sslcert=/c.pem&sslkey=/k.pem");
        assert_eq!(o.tls.ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!(o.tls.cert_file, Some(PathBuf::from("/c.pem")));
        assert_eq!(o.tls.key_file, Some(PathBuf::from("/k.pem")));
    }

    #[test]
    fn startup_options_carry_session_settings() {
        let s = PgConnectOptions::startup_options();
        assert_eq!(s, "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres -c extra_float_digits=3 -c bytea_output=hex");
    }
}
