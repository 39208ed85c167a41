//! Startup and authentication of a replication connection.
//!
//! Supported methods: trust, cleartext password, MD5 and SCRAM-SHA-256
//! (postgres-protocol does the SCRAM math). Channel binding is not offered:
//! the client sends the `n` GS2 flag ("client does not support it"), which
//! every server accepts even when it offers SCRAM-SHA-256-PLUS. GSS, SSPI
//! and Kerberos are refused with a Permanent error.

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;

use super::frame::{self, Body, DbError};
use super::socket::Wire;
use crate::conn::{PgConnectOptions, Secret};
use crate::error::SourceError;

const AUTH_OK: i32 = 0;
const AUTH_CLEARTEXT: i32 = 3;
const AUTH_MD5: i32 = 5;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;
const SCRAM: &str = "SCRAM-SHA-256";

/// What the server told us during startup.
#[derive(Debug, Default)]
pub(crate) struct ServerParams {
    pub server_version: Option<String>,
    pub backend_pid: Option<i32>,
}

fn io_err(e: std::io::Error) -> SourceError {
    SourceError::transient(format!("encoding a message: {e}"))
}

/// Sends the startup message (`replication=database` when `replication`)
/// and authenticates; returns once the server is ready for queries.
pub(crate) async fn startup(wire: &mut Wire, opts: &PgConnectOptions, replication: bool) -> Result<ServerParams, SourceError> {
    let options = PgConnectOptions::startup_options();
    let mut params: Vec<(&str, &str)> = vec![
        ("user", &opts.user),
        ("database", &opts.dbname),
        ("application_name", &opts.application_name),
        ("client_encoding", "UTF8"),
        ("options", &options),
    ];
    if replication {
        params.push(("replication", "database"));
    }
    frontend::startup_message(params.iter().copied(), &mut wire.wbuf).map_err(io_err)?;
    wire.send().await?;

    let mut scram: Option<ScramSha256> = None;
    let mut server = ServerParams::default();
    loop {
        let f = wire.read_frame().await?;
        match f.tag {
            frame::AUTHENTICATION => {
                let mut b = Body::new(&f.body);
                match b.i32()? {
                    AUTH_OK => {}
                    AUTH_CLEARTEXT => {
                        let pw = password(opts)?;
                        frontend::password_message(pw.as_bytes(), &mut wire.wbuf).map_err(io_err)?;
                        wire.send().await?;
                    }
                    AUTH_MD5 => {
                        let salt = b.bytes(4)?;
                        let hash = md5_hash(opts.user.as_bytes(), password(opts)?.as_bytes(), [salt[0], salt[1], salt[2], salt[3]]);
                        frontend::password_message(hash.as_bytes(), &mut wire.wbuf).map_err(io_err)?;
                        wire.send().await?;
                    }
                    AUTH_SASL => {
                        let mut mechanisms = Vec::new();
                        loop {
                            let m = b.cstr()?;
                            if m.is_empty() {
                                break;
                            }
                            mechanisms.push(m);
                        }
                        if !mechanisms.iter().any(|m| m == SCRAM) {
                            return Err(SourceError::permanent(format!(
                                "PostgreSQL asks for SASL mechanisms {mechanisms:?}; pgfanout supports {SCRAM}"
                            )));
                        }
                        let s = ScramSha256::new(password(opts)?.as_bytes(), ChannelBinding::unsupported());
                        frontend::sasl_initial_response(SCRAM, s.message(), &mut wire.wbuf).map_err(io_err)?;
                        wire.send().await?;
                        scram = Some(s);
                    }
                    AUTH_SASL_CONTINUE => {
                        let s = scram.as_mut().ok_or_else(|| SourceError::transient("SASL continue without SASL start"))?;
                        s.update(b.rest()).map_err(|e| SourceError::permanent(format!("SCRAM authentication failed: {e}")))?;
                        frontend::sasl_response(s.message(), &mut wire.wbuf).map_err(io_err)?;
                        wire.send().await?;
                    }
                    AUTH_SASL_FINAL => {
                        let s = scram.as_mut().ok_or_else(|| SourceError::transient("SASL final without SASL start"))?;
                        s.finish(b.rest()).map_err(|e| {
                            SourceError::permanent(format!("the server failed SCRAM verification (is it the server you meant?): {e}"))
                        })?;
                    }
                    other => {
                        return Err(SourceError::permanent(format!(
                            "PostgreSQL asks for an authentication method pgfanout does not support (code {other}); \
                             use scram-sha-256, md5, password or trust in pg_hba.conf"
                        )))
                    }
                }
            }
            frame::PARAMETER_STATUS => {
                let mut b = Body::new(&f.body);
                let name = b.cstr()?;
                let value = b.cstr()?;
                if name == "server_version" {
                    server.server_version = Some(value);
                }
            }
            frame::BACKEND_KEY_DATA => server.backend_pid = Some(Body::new(&f.body).i32()?),
            frame::NOTICE_RESPONSE => {}
            frame::READY_FOR_QUERY => return Ok(server),
            frame::ERROR_RESPONSE => return Err(explain_startup_error(opts, DbError::parse(&f.body))),
            other => return Err(SourceError::transient(format!("unexpected message {:?} during startup", other as char))),
        }
    }
}

fn password(opts: &PgConnectOptions) -> Result<&str, SourceError> {
    opts.password.as_ref().map(Secret::expose).ok_or_else(|| {
        SourceError::permanent(format!(
            "PostgreSQL requires a password for user {:?}: put it in the source URL (postgres://user:password@...)",
            opts.user
        ))
    })
}

/// Maps a startup ErrorResponse to an error that says what to fix.
pub(crate) fn explain_startup_error(opts: &PgConnectOptions, e: DbError) -> SourceError {
    let fix = match e.code.as_str() {
        "28P01" => format!("check the user name and password of {} in the source URL", opts.redacted()),
        "28000" => format!(
            "allow user {:?} to connect to database {:?} in pg_hba.conf (replication=database connections match the \
             database name, not the `replication` keyword) and check that the role exists and has LOGIN",
            opts.user, opts.dbname
        ),
        "3D000" => format!("create database {:?} or fix the database name in the source URL", opts.dbname),
        "42501" => format!("grant the role the replication attribute: ALTER ROLE \"{}\" REPLICATION", opts.user.replace('"', "\"\"")),
        _ => String::new(),
    };
    let e = e.into_source_error();
    if e.is_permanent() && !fix.is_empty() {
        e.definite_with_fix(fix)
    } else {
        e
    }
}
