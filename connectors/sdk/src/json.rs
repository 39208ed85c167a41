//! Small, fast JSON writing helpers used on the hot path.
//!
//! Records are written with hand-rolled code rather than serde because column
//! values carry PostgreSQL's own number text (exact numerics) and JSON text
//! (json/jsonb columns) that must be copied through verbatim.

/// Appends `s` as a JSON string literal (quoted and escaped).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Formats microseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn write_timestamp_micros(out: &mut Vec<u8>, micros: i64) {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let s = format!("\"{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z\"", sod / 3600, (sod / 60) % 60, sod % 60);
    out.extend_from_slice(s.as_bytes());
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_serde_json() {
        for s in ["plain", "quo\"te", "back\\slash", "nl\nx\t\r", "\u{1}\u{1f}", "ünï©ode ✓"] {
            let mut out = Vec::new();
            write_str(&mut out, s);
            let ours = String::from_utf8(out).unwrap();
            assert_eq!(serde_json::from_str::<String>(&ours).unwrap(), s);
        }
    }

    #[test]
    fn formats_timestamps() {
        let mut out = Vec::new();
        write_timestamp_micros(&mut out, 0);
        assert_eq!(out, b"\"1970-01-01T00:00:00.000000Z\"");
        out.clear();
        // 2026-11-24T10:00:00.123456Z
        write_timestamp_micros(&mut out, 1_795_514_400_123_456);
        assert_eq!(out, b"\"2026-11-24T10:00:00.123456Z\"");
        out.clear();
        write_timestamp_micros(&mut out, -1);
        assert_eq!(out, b"\"1969-12-31T23:59:59.999999Z\"");
    }
}
