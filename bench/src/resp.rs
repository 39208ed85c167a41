//! Just enough of the Redis protocol (RESP2) for the benchmark: send a
//! command, read a reply, and read pub/sub messages. The benchmark only needs
//! a few commands (FLUSHALL, CONFIG SET, SUBSCRIBE, and the Redis ceiling's
//! reads and pipelined EVALSHA calls), so a full client is not worth a
//! dependency.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use anyhow::{bail, Context, Result};

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

/// One blocking connection.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    pub fn connect(port: u16) -> Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connect to redis on port {port}"))?;
        s.set_nodelay(true)?;
        Ok(Conn { reader: BufReader::new(s.try_clone()?), writer: s })
    }

    /// A second handle on the same socket (e.g. to send UNSUBSCRIBE while
    /// another thread blocks reading).
    pub fn try_clone(&self) -> Result<Conn> {
        let s = self.writer.try_clone()?;
        Ok(Conn { reader: BufReader::new(s.try_clone()?), writer: s })
    }

    /// Sends a command and returns its reply; a Redis error is an `Err`.
    pub fn cmd(&mut self, args: &[&str]) -> Result<Reply> {
        self.send(args)?;
        match self.read()? {
            Reply::Error(e) => bail!("redis {}: {e}", args.join(" ")),
            r => Ok(r),
        }
    }

    /// Sends a command without reading the reply.
    pub fn send(&mut self, args: &[&str]) -> Result<()> {
        self.send_raw(&encode(args))
    }

    /// Sends a command already encoded with [`encode`].
    pub fn send_raw(&mut self, command: &[u8]) -> Result<()> {
        self.writer.write_all(command).context("write to redis")
    }

    /// Reads one reply (blocking).
    pub fn read(&mut self) -> Result<Reply> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("redis closed the connection");
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let (kind, rest) = line.split_at(1.min(line.len()));
        Ok(match kind {
            "+" => Reply::Status(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(rest.parse().context("bad integer reply")?),
            "$" => {
                let n: i64 = rest.parse().context("bad bulk length")?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut data = vec![0u8; n as usize + 2];
                    self.reader.read_exact(&mut data)?;
                    data.truncate(n as usize);
                    Reply::Bulk(Some(data))
                }
            }
            "*" => {
                let n: i64 = rest.parse().context("bad array length")?;
                let mut items = Vec::with_capacity(n.max(0) as usize);
                for _ in 0..n.max(0) {
                    items.push(self.read()?);
                }
                Reply::Array(items)
            }
            _ => bail!("unexpected redis reply {line:?}"),
        })
    }
}

/// A command as RESP bytes.
pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut buf = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        buf.extend_from_slice(a.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    buf
}

/// The payload of a pub/sub `message` push (`[message, channel, payload]`).
pub fn message_payload(r: &Reply) -> Option<&[u8]> {
    match r {
        Reply::Array(items) if items.len() == 3 => match (&items[0], &items[2]) {
            (Reply::Bulk(Some(kind)), Reply::Bulk(Some(payload))) if kind == b"message" => Some(payload),
            _ => None,
        },
        _ => None,
    }
}
