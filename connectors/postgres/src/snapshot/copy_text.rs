//! The `COPY ... TO STDOUT` text format, read back into column values.
//!
//! COPY's text format writes each row on one line (ended by `\n`), columns
//! separated by a tab, NULL as `\N`, and every value as its type's text
//! output with backslash escapes for the bytes that would break the framing.
//! Once the escapes are undone a value's bytes are exactly what pgoutput
//! sends for the same column, so the stream's [`TypeDecoder`](crate::types::TypeDecoder)s
//! apply unchanged and snapshot rows equal streamed rows (and `to_jsonb()`).
//!
//! This runs once per column of every copied row: fields without a backslash
//! (nearly all of them) are handed out as slices of the input, and only
//! escaped fields are rebuilt, in one reused scratch buffer.

/// A COPY text line that does not follow the format.
#[derive(Debug, PartialEq, Eq)]
pub struct CopyFormatError(pub &'static str);

impl From<CopyFormatError> for crate::error::SourceError {
    fn from(e: CopyFormatError) -> Self {
        crate::error::SourceError::permanent(format!("malformed COPY text row: {}", e.0))
    }
}

/// Calls `f` with each field of one COPY text line (without its `\n`), in
/// order: `None` for NULL (`\N`), else the value with COPY's escapes undone
/// (`\b \f \n \r \t \v \\`, `\` + 1-3 octal digits, `\x` + 1-2 hex digits,
/// `\` + any other byte = that byte). An empty line is one empty field.
/// Stops at, and returns, the first error of `f`.
pub fn for_each_field<E>(line: &[u8], scratch: &mut Vec<u8>, mut f: impl FnMut(Option<&[u8]>) -> Result<(), E>) -> Result<(), E>
where
    E: From<CopyFormatError>,
{
    let mut start = 0;
    loop {
        // A raw tab is always a delimiter: COPY escapes tabs inside values.
        let rest = &line[start..];
        let (end, escaped) = match memchr::memchr2(b'\t', b'\\', rest) {
            None => (line.len(), false),
            Some(i) if rest[i] == b'\t' => (start + i, false),
            Some(i) => (memchr::memchr(b'\t', &rest[i..]).map_or(line.len(), |j| start + i + j), true),
        };
        let raw = &line[start..end];
        if !escaped {
            f(Some(raw))?;
        } else if raw == b"\\N" {
            f(None)?;
        } else {
            unescape(raw, scratch)?;
            f(Some(scratch))?;
        }
        if end == line.len() {
            return Ok(());
        }
        start = end + 1;
    }
}

/// Undoes COPY text escapes of one field into `out` (cleared first).
pub fn unescape(raw: &[u8], out: &mut Vec<u8>) -> Result<(), CopyFormatError> {
    out.clear();
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let Some(&c) = raw.get(i + 1) else {
            return Err(CopyFormatError("a field ends with a lone backslash"));
        };
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                // PostgreSQL keeps the low byte of an out-of-range octal escape.
                out.push((v & 0xFF) as u8);
            }
            b'x' => match raw.get(i).and_then(|&d| hex_digit(d)) {
                Some(first) => {
                    i += 1;
                    let mut v = first;
                    if let Some(second) = raw.get(i).and_then(|&d| hex_digit(d)) {
                        v = v * 16 + second;
                        i += 1;
                    }
                    out.push(v);
                }
                None => out.push(b'x'),
            },
            other => out.push(other),
        }
    }
    Ok(())
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Reassembles lines from COPY data messages. PostgreSQL sends one row per
/// CopyData message, but the protocol does not promise it, so a row split
/// across messages is joined in `carry` (which then holds at most one row).
#[derive(Debug, Default)]
pub struct LineSplitter {
    carry: Vec<u8>,
}

impl LineSplitter {
    /// Calls `f` with every complete line (without `\n`) that `chunk`
    /// finishes, keeping an unfinished tail for the next call.
    pub fn push<E>(&mut self, chunk: &[u8], mut f: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let mut rest = chunk;
        if !self.carry.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(nl) => {
                    self.carry.extend_from_slice(&rest[..nl]);
                    f(&self.carry)?;
                    self.carry.clear();
                    rest = &rest[nl + 1..];
                }
                None => {
                    self.carry.extend_from_slice(rest);
                    return Ok(());
                }
            }
        }
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            f(&rest[..nl])?;
            rest = &rest[nl + 1..];
        }
        self.carry.extend_from_slice(rest);
        Ok(())
    }

    /// True when no partial line is pending (call it at the end of the data).
    pub fn is_empty(&self) -> bool {
        self.carry.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(line: &[u8]) -> Vec<Option<Vec<u8>>> {
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        for_each_field::<CopyFormatError>(line, &mut scratch, |f| {
            out.push(f.map(<[u8]>::to_vec));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn splits_and_unescapes() {
        let got = fields(b"1\t\\N\ta\\tb\\nc\\\\d\t\t\\b\\f\\r\\v\\101\\x41\\x4g\\xg\\q\\0");
        let want: Vec<Option<Vec<u8>>> =
            vec![Some(b"1".to_vec()), None, Some(b"a\tb\nc\\d".to_vec()), Some(Vec::new()), Some(b"\x08\x0c\r\x0bAA\x04gxgq\0".to_vec())];
        assert_eq!(got, want);
        assert_eq!(fields(b""), vec![Some(Vec::new())]);
        // "\\N" (an escaped backslash then N) is the two-character string \N.
        assert_eq!(fields(b"\\\\N"), vec![Some(b"\\N".to_vec())]);
        assert_eq!(fields("é中🎉".as_bytes()), vec![Some("é中🎉".as_bytes().to_vec())]);
    }

    #[test]
    fn lone_backslash_is_an_error() {
        let mut s = Vec::new();
        assert_eq!(unescape(b"ab\\", &mut s), Err(CopyFormatError("a field ends with a lone backslash")));
    }

    #[test]
    fn lines_across_chunks() {
        let mut split = LineSplitter::default();
        let mut lines: Vec<Vec<u8>> = Vec::new();
        for chunk in [&b"a\tb\nc"[..], b"d", b"e\nf\n", b"", b"g\n"] {
            split
                .push::<()>(chunk, |l| {
                    lines.push(l.to_vec());
                    Ok(())
                })
                .unwrap();
        }
        assert!(split.is_empty());
        assert_eq!(lines, vec![b"a\tb".to_vec(), b"cde".to_vec(), b"f".to_vec(), b"g".to_vec()]);
        split.push::<()>(b"partial", |_| Ok(())).unwrap();
        assert!(!split.is_empty());
    }
}
