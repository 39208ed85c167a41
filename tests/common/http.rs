//! The daemon's HTTP listener, asked the way an operator's curl would.

/// `GET path` on 127.0.0.1:`port`: the status code (0 when nothing
/// answers) and the whole response.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    http_request(port, "GET", path)
}

/// `method path` with an empty body: the status code and the response.
pub fn http_request(port: u16, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = match std::net::TcpStream::connect(("127.0.0.1", port)) {
        Ok(s) => s,
        Err(_) => return (0, String::new()),
    };
    let _ = s.write_all(format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n").as_bytes());
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    let code = body.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, body)
}
