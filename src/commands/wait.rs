//! `pgfanout wait`: read-your-writes from the shell, through the daemon's
//! `/wait` endpoint.

use pgfanout_sdk::Lsn;

use super::{Exit, Report};
use crate::config::Config;

/// `pgfanout wait`: asks the daemon's `/wait` and exits 0 once the position
/// is durable, 1 on timeout or when the daemon cannot be reached, 2 for a
/// bad LSN or sink.
pub async fn wait(cfg: &Config, lsn: &str, sink: Option<&str>, timeout: std::time::Duration) -> Report {
    let mut r = Report::default();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if lsn.parse::<Lsn>().is_err() {
        r.complain(format_args!("--lsn {lsn:?}: not an LSN like 0/16B3748 (take pg_current_wal_insert_lsn() after the commit)"));
        return r.ends(Exit::Usage);
    }
    if let Some(s) = sink {
        if !cfg.sinks.contains_key(s) {
            let names: Vec<&str> = cfg.sinks.keys().map(String::as_str).collect();
            r.complain(format_args!("--sink {s:?}: no such sink; the sinks are: {}", names.join(", ")));
            return r.ends(Exit::Usage);
        }
    }
    if !cfg.http.enabled {
        r.complain(format_args!("wait asks the daemon's HTTP listener, which this config disables (http.enabled: false)"));
        return r.ends(Exit::Usage);
    }
    let listen = &cfg.http.listen;
    let mut path = format!("/wait?lsn={lsn}&timeout={}ms", timeout.as_millis());
    if let Some(s) = sink {
        path.push_str(&format!("&sink={}", url_escape(s)));
    }
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(listen.as_str()).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {listen}\r\n\r\n").as_bytes()).await?;
        let mut response = String::new();
        s.read_to_string(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = match tokio::time::timeout(timeout + std::time::Duration::from_secs(5), exchange).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            r.complain(format_args!("cannot reach the daemon at http://{listen}/wait: {e} (is pgfanout running with this config?)"));
            return r.ends(Exit::Failed);
        }
        Err(_) => {
            r.complain(format_args!("the daemon at http://{listen} did not answer within {timeout:?}"));
            return r.ends(Exit::Failed);
        }
    };
    let status = response.split_whitespace().nth(1).unwrap_or_default().to_string();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    r.say(format_args!("{}", body.trim()));
    r.ends(match status.as_str() {
        "200" => Exit::Ok,
        "400" => Exit::Usage,
        _ => Exit::Failed,
    })
}

/// Percent-encodes what a query parameter cannot hold as is.
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}
