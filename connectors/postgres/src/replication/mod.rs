//! Our own client for PostgreSQL's logical replication protocol.
//!
//! tokio-postgres cannot open `replication=database` connections nor speak
//! CopyBoth, so this module does the little that is needed on top of
//! `postgres-protocol` (message encoding, SCRAM math):
//!
//! - [`socket`]: TCP / Unix / TLS transport and the buffered frame reader;
//! - [`tls`]: rustls configs with libpq's sslmode semantics;
//! - [`auth`]: startup and authentication (trust, password, MD5, SCRAM);
//! - [`frame`]: backend framing and the zero-copy XLogData parser;
//! - [`stream`]: the CopyBoth stream with keepalives and status updates.
//!
//! [`ReplicationClient`] runs replication commands through the simple query
//! protocol (IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT, plain SQL), then
//! [`ReplicationClient::start_logical_replication`] turns it into a
//! [`ReplicationStream`].

pub(crate) mod auth;
pub(crate) mod copy_out;
pub(crate) mod frame;
mod rawsock;
pub(crate) mod socket;
mod stream;
pub(crate) mod tls;

use pgfanout_sdk::Lsn;
use postgres_protocol::message::frontend;

pub use frame::ReplicationMessage;
pub use stream::{ReceiveBuffer, ReplicationStream, SAME_HOST_RECEIVE_BUFFER};

use crate::conn::PgConnectOptions;
use crate::error::SourceError;
use frame::{Body, DbError};
use socket::Wire;

/// Result of IDENTIFY_SYSTEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    pub system_id: String,
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlogpos: Lsn,
    /// The database of this connection (None for physical replication).
    pub dbname: Option<String>,
}

/// What CREATE_REPLICATION_SLOT does with the slot's snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotAction {
    /// Export it (usable with `SET TRANSACTION SNAPSHOT` on other connections
    /// until the next command on this connection).
    Export,
    /// No snapshot.
    NoExport,
    /// Use it in the current transaction of this connection (must be inside
    /// `BEGIN ISOLATION LEVEL REPEATABLE READ`).
    Use,
}

/// Result of CREATE_REPLICATION_SLOT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    pub slot_name: String,
    /// The position from which the slot streams; a snapshot taken with it
    /// contains exactly the transactions committed before this point.
    pub consistent_point: Lsn,
    /// The exported snapshot name ([`SnapshotAction::Export`] only).
    pub snapshot_name: Option<String>,
}

/// What a logical stream is asked for: the pgoutput protocol version, and
/// whether in-progress transactions are streamed (`streaming 'on'`, see
/// [`crate::streaming`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pgoutput {
    pub proto_version: u8,
    pub streaming: bool,
}

impl Pgoutput {
    /// Protocol 1: every transaction is sent once it has committed (the
    /// server spills large ones to its disk meanwhile). Every server.
    pub const V1: Pgoutput = Pgoutput { proto_version: 1, streaming: false };

    /// With `streaming`, the newest protocol a server of major version
    /// `major` speaks (4 from PostgreSQL 16, 3 on 15, 2 on 14) with
    /// in-progress transactions streamed; [`V1`](Self::V1) otherwise, and on
    /// servers before 14. The messages of versions 3 and 4 (two-phase,
    /// parallel apply) only come when asked for, and pgfanout does not ask.
    pub fn for_server(major: u32, streaming: bool) -> Pgoutput {
        if !streaming {
            return Pgoutput::V1;
        }
        let proto_version = match major {
            16.. => 4,
            15 => 3,
            14 => 2,
            _ => 1,
        };
        Pgoutput { proto_version, streaming: proto_version >= 2 }
    }
}

/// The major version in a `server_version` string (`15.8 (Debian ...)`,
/// `17beta1`, `9.6.24`: 15, 17, 9).
pub fn major_version(server_version: &str) -> Option<u32> {
    let digits: String = server_version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// One row of a simple-query result, all values in text form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleQueryRow {
    pub columns: Vec<String>,
    pub values: Vec<Option<String>>,
}

impl SimpleQueryRow {
    /// The value of column `name`; None if the column is absent or NULL.
    pub fn get(&self, name: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == name)?;
        self.values.get(i)?.as_deref()
    }
}

/// A replication connection (`replication=database`), before streaming.
pub struct ReplicationClient {
    wire: Wire,
    backend_pid: Option<i32>,
    server_version: Option<String>,
}

impl ReplicationClient {
    /// Connects (TCP or Unix socket), negotiates TLS per `opts.sslmode`,
    /// authenticates and waits for ReadyForQuery, all bounded by
    /// `opts.connect_timeout`.
    ///
    /// Errors: bad credentials (28P01), rejected by pg_hba (28000), unknown
    /// database (3D000), missing REPLICATION attribute (42501), TLS refused
    /// or certificate rejected -> Permanent, with what to fix. Refused
    /// connection, timeout, server starting up -> Transient.
    pub async fn connect(opts: &PgConnectOptions) -> Result<Self, SourceError> {
        Self::connect_with(opts, ReceiveBuffer::Kernel).await
    }

    /// [`connect`](Self::connect) for a connection that will stream: its
    /// socket's receive buffer is set as `receive_buffer` says (see
    /// [`ReceiveBuffer`]; it has to be set before the socket connects).
    pub async fn connect_with(opts: &PgConnectOptions, receive_buffer: ReceiveBuffer) -> Result<Self, SourceError> {
        let mut last = None;
        // Each listed host in order (see `conn::connect_sql`).
        for one in opts.per_host() {
            let mut client = match connect_wire(&one, true, receive_buffer).await {
                Ok((wire, params)) => ReplicationClient { wire, backend_pid: params.backend_pid, server_version: params.server_version },
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            if opts.target_session_attrs == crate::conn::TargetSessionAttrs::ReadWrite {
                let rows = client.simple_query("SHOW transaction_read_only").await?;
                if rows.first().and_then(|r| r.get("transaction_read_only")) == Some("on") {
                    last = Some(SourceError::transient(format!("{} takes no writes (target_session_attrs=read-write)", one.endpoint())));
                    continue;
                }
            }
            return Ok(client);
        }
        Err(last.unwrap_or_else(|| SourceError::transient("no host to connect to")))
    }

    /// The walsender's process id (for `pg_terminate_backend`, diagnostics).
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_pid
    }

    /// The `server_version` the server reported at startup.
    pub fn server_version(&self) -> Option<&str> {
        self.server_version.as_deref()
    }

    /// The server's major version (from [`server_version`](Self::server_version)).
    pub fn server_major(&self) -> Option<u32> {
        self.server_version.as_deref().and_then(major_version)
    }

    /// `SO_RCVBUF` as the kernel reports it when [`connect_with`](Self::connect_with)
    /// set it; `None` while the kernel sizes the buffer.
    pub fn receive_buffer(&self) -> Option<usize> {
        self.wire.receive_buffer()
    }

    /// True when the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.wire.socket.is_tls()
    }

    /// Runs `sql` with the simple query protocol and returns every row of
    /// every result set. An ErrorResponse becomes a SourceError (Permanent
    /// for the SQLSTATEs of [`crate::error::is_permanent_sqlstate`]) after the
    /// connection is ready again, so the client stays usable.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<SimpleQueryRow>, SourceError> {
        simple_query(&mut self.wire, sql).await
    }

    /// IDENTIFY_SYSTEM.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, SourceError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows.first().ok_or_else(|| SourceError::transient("IDENTIFY_SYSTEM returned no row"))?;
        let field = |name: &str| row.get(name).ok_or_else(|| SourceError::transient(format!("IDENTIFY_SYSTEM returned no {name}")));
        Ok(SystemIdentity {
            system_id: field("systemid")?.to_string(),
            timeline: field("timeline")?.parse().map_err(|_| SourceError::transient("IDENTIFY_SYSTEM: bad timeline"))?,
            xlogpos: parse_lsn(field("xlogpos")?)?,
            dbname: row.get("dbname").map(str::to_string),
        })
    }

    /// `CREATE_REPLICATION_SLOT "slot" LOGICAL pgoutput <snapshot action>`.
    /// An existing slot of that name -> Permanent error (42710 is not
    /// retried: the caller should look the slot up instead). With
    /// [`SnapshotAction::Export`] the snapshot lives until the next command on
    /// this connection.
    pub async fn create_logical_slot(&mut self, slot: &str, snapshot: SnapshotAction) -> Result<CreatedSlot, SourceError> {
        self.create_logical_slot_with(slot, snapshot, false).await
    }

    /// [`create_logical_slot`](Self::create_logical_slot); with `failover`
    /// on a server of 17 or later the slot is a failover slot (a standby
    /// with `sync_replication_slots = on` keeps a copy; ignored before 17).
    pub async fn create_logical_slot_with(
        &mut self,
        slot: &str,
        snapshot: SnapshotAction,
        failover: bool,
    ) -> Result<CreatedSlot, SourceError> {
        validate_slot_name(slot)?;
        let command = if failover && self.server_major().is_some_and(|m| m >= 17) {
            let action = match snapshot {
                SnapshotAction::Export => "export",
                SnapshotAction::NoExport => "nothing",
                SnapshotAction::Use => "use",
            };
            format!("CREATE_REPLICATION_SLOT \"{slot}\" LOGICAL pgoutput (SNAPSHOT '{action}', FAILOVER)")
        } else {
            let action = match snapshot {
                SnapshotAction::Export => "EXPORT_SNAPSHOT",
                SnapshotAction::NoExport => "NOEXPORT_SNAPSHOT",
                SnapshotAction::Use => "USE_SNAPSHOT",
            };
            format!("CREATE_REPLICATION_SLOT \"{slot}\" LOGICAL pgoutput {action}")
        };
        let rows = match self.simple_query(&command).await {
            Err(e) if e.sqlstate() == Some("42710") => return Err(e.definite_with_fix("the slot already exists; reuse it or drop it")),
            other => other?,
        };
        let row = rows.first().ok_or_else(|| SourceError::transient("CREATE_REPLICATION_SLOT returned no row"))?;
        Ok(CreatedSlot {
            slot_name: row.get("slot_name").unwrap_or(slot).to_string(),
            consistent_point: parse_lsn(
                row.get("consistent_point").ok_or_else(|| SourceError::transient("CREATE_REPLICATION_SLOT: no consistent_point"))?,
            )?,
            snapshot_name: row.get("snapshot_name").map(str::to_string),
        })
    }

    /// `ALTER_REPLICATION_SLOT "slot" (FAILOVER true)` (PostgreSQL 17+):
    /// makes an existing slot a failover slot. The slot must not be in use.
    pub async fn make_failover_slot(&mut self, slot: &str) -> Result<(), SourceError> {
        validate_slot_name(slot)?;
        self.simple_query(&format!("ALTER_REPLICATION_SLOT \"{slot}\" (FAILOVER true)")).await?;
        Ok(())
    }

    /// `START_REPLICATION SLOT "slot" LOGICAL start (proto_version '1',
    /// publication_names '"publication"', messages 'true')`: see
    /// [`start_logical_replication_with`](Self::start_logical_replication_with).
    pub async fn start_logical_replication(self, slot: &str, start: Lsn, publication: &str) -> Result<ReplicationStream, SourceError> {
        self.start_logical_replication_with(slot, start, publication, Pgoutput::V1).await
    }

    /// `START_REPLICATION SLOT "slot" LOGICAL start (proto_version 'N'[,
    /// streaming 'on'], publication_names '"publication"', messages 'true')`
    /// and waits for CopyBothResponse. A missing slot (42704) or a slot in
    /// use by another connection (55006) is returned as the server reports
    /// it: 42704 is Permanent, 55006 Transient (the other walsender may be
    /// going away).
    pub async fn start_logical_replication_with(
        mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
        protocol: Pgoutput,
    ) -> Result<ReplicationStream, SourceError> {
        validate_slot_name(slot)?;
        let pub_ident = format!("\"{}\"", publication.replace('"', "\"\""));
        let streaming = if protocol.streaming { ", streaming 'on'" } else { "" };
        let sql = format!(
            "START_REPLICATION SLOT \"{slot}\" LOGICAL {start} (proto_version '{}'{streaming}, publication_names '{}', messages 'true')",
            protocol.proto_version,
            pub_ident.replace('\'', "''")
        );
        frontend::query(&sql, &mut self.wire.wbuf).map_err(|e| SourceError::permanent(format!("invalid command: {e}")))?;
        self.wire.send().await?;
        loop {
            let f = self.wire.read_frame().await?;
            match f.tag {
                frame::COPY_BOTH_RESPONSE => return Ok(ReplicationStream::new(self.wire, slot.to_string())),
                frame::NOTICE_RESPONSE | frame::PARAMETER_STATUS => {}
                frame::ERROR_RESPONSE => return Err(DbError::parse(&f.body).into_source_error()),
                other => return Err(SourceError::transient(format!("unexpected message {:?} after START_REPLICATION", other as char))),
            }
        }
    }

    /// Sends Terminate and closes the connection.
    pub async fn close(mut self) -> Result<(), SourceError> {
        frontend::terminate(&mut self.wire.wbuf);
        self.wire.send().await
    }
}

impl std::fmt::Debug for ReplicationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationClient").field("backend_pid", &self.backend_pid).field("tls", &self.is_tls()).finish()
    }
}

fn parse_lsn(s: &str) -> Result<Lsn, SourceError> {
    s.parse().map_err(|_| SourceError::transient(format!("invalid LSN {s:?} from the server")))
}

/// Opens a connection (a replication one when `replication`), negotiates
/// TLS and authenticates, all bounded by `opts.connect_timeout`; errors as
/// [`ReplicationClient::connect`].
pub(crate) async fn connect_wire(
    opts: &PgConnectOptions,
    replication: bool,
    receive_buffer: ReceiveBuffer,
) -> Result<(Wire, auth::ServerParams), SourceError> {
    let fut = async {
        let (socket, sized) = socket::connect_socket(opts, receive_buffer).await?;
        let mut wire = Wire::new(socket, sized);
        let params = auth::startup(&mut wire, opts, replication).await?;
        Ok::<_, SourceError>((wire, params))
    };
    match tokio::time::timeout(opts.connect_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(SourceError::transient(format!(
            "timed out after {:?} connecting to PostgreSQL at {}",
            opts.connect_timeout,
            opts.endpoint()
        ))),
    }
}

/// Runs `sql` with the simple query protocol on `wire` (see
/// [`ReplicationClient::simple_query`]).
pub(crate) async fn simple_query(wire: &mut Wire, sql: &str) -> Result<Vec<SimpleQueryRow>, SourceError> {
    frontend::query(sql, &mut wire.wbuf).map_err(|e| SourceError::permanent(format!("invalid query: {e}")))?;
    wire.send().await?;
    let mut rows = Vec::new();
    let mut columns: Vec<String> = Vec::new();
    let mut error: Option<DbError> = None;
    loop {
        let f = wire.read_frame().await?;
        match f.tag {
            frame::ROW_DESCRIPTION => {
                let mut b = Body::new(&f.body);
                let n = b.i16()?.max(0) as usize;
                columns = Vec::with_capacity(n);
                for _ in 0..n {
                    columns.push(b.cstr()?);
                    b.bytes(18)?; // table oid, attnum, type oid, typlen, typmod, format
                }
            }
            frame::DATA_ROW => {
                let mut b = Body::new(&f.body);
                let n = b.i16()?.max(0) as usize;
                let mut values = Vec::with_capacity(n);
                for _ in 0..n {
                    let len = b.i32()?;
                    values.push(if len < 0 {
                        None
                    } else {
                        let raw = b.bytes(len as usize)?;
                        Some(String::from_utf8_lossy(raw).into_owned())
                    });
                }
                rows.push(SimpleQueryRow { columns: columns.clone(), values });
            }
            frame::COMMAND_COMPLETE | frame::EMPTY_QUERY | frame::NOTICE_RESPONSE | frame::PARAMETER_STATUS => {}
            frame::ERROR_RESPONSE => error = Some(DbError::parse(&f.body)),
            frame::READY_FOR_QUERY => {
                return match error {
                    Some(e) => Err(e.into_source_error()),
                    None => Ok(rows),
                }
            }
            frame::COPY_BOTH_RESPONSE | frame::COPY_IN_RESPONSE | frame::COPY_OUT_RESPONSE => {
                return Err(SourceError::permanent("simple_query cannot run COPY or START_REPLICATION"));
            }
            other => return Err(SourceError::transient(format!("unexpected message {:?} in query result", other as char))),
        }
    }
}

/// Slot names are what PostgreSQL accepts: 1-63 of `[a-z0-9_]`. Checking
/// here keeps them safe to splice into replication commands.
pub fn validate_slot_name(slot: &str) -> Result<(), SourceError> {
    let ok = !slot.is_empty() && slot.len() <= 63 && slot.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SourceError::permanent(format!("invalid replication slot name {slot:?}: use 1-63 lower-case letters, digits and underscores")))
    }
}

/// Classifies a tokio-postgres connect error like the replication client's
/// (with the same "what to fix" messages).
pub(crate) fn classify_connect_error(opts: &PgConnectOptions, e: tokio_postgres::Error) -> SourceError {
    match e.as_db_error() {
        Some(db) => auth::explain_startup_error(
            opts,
            DbError {
                severity: db.severity().to_string(),
                code: db.code().code().to_string(),
                message: db.message().to_string(),
                detail: db.detail().map(str::to_string),
                hint: db.hint().map(str::to_string),
            },
        ),
        None => {
            let msg = format!("cannot connect to PostgreSQL at {}: {e}", opts.endpoint());
            let tls_problem = std::error::Error::source(&e).is_some_and(|s| s.to_string().contains("certificate"))
                || msg.contains("does not support TLS");
            if tls_problem {
                SourceError::permanent(format!("{msg}; check the CA file and sslmode"))
            } else {
                SourceError::transient(msg)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names() {
        assert!(validate_slot_name("pgfanout_1").is_ok());
        for bad in ["", "Upper", "a-b", "x\"; DROP", &"a".repeat(64)] {
            assert!(validate_slot_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn simple_query_row_get() {
        let r = SimpleQueryRow { columns: vec!["a".into(), "b".into()], values: vec![Some("1".into()), None] };
        assert_eq!(r.get("a"), Some("1"));
        assert_eq!(r.get("b"), None);
        assert_eq!(r.get("c"), None);
    }

    #[test]
    fn protocol_by_server_version() {
        let major = |v: &str| major_version(v).unwrap();
        assert_eq!([major("15.8 (Debian 15.8-0+deb12u1)"), major("17beta1"), major("9.6.24"), major("18.0")], [15, 17, 9, 18]);
        assert_eq!(major_version("devel"), None);
        let p = |major, streaming| Pgoutput::for_server(major, streaming);
        assert_eq!(p(13, true), Pgoutput::V1, "no streaming before 14");
        assert_eq!(p(14, true), Pgoutput { proto_version: 2, streaming: true });
        assert_eq!(p(15, true), Pgoutput { proto_version: 3, streaming: true });
        assert_eq!(p(18, true), Pgoutput { proto_version: 4, streaming: true });
        assert_eq!(p(16, false), Pgoutput::V1);
    }
}
