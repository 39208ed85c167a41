//! Small, fast JSON writing helpers used on the hot path.
//!
//! Records are written with hand-rolled code rather than serde because column
//! values carry PostgreSQL's own number text (exact numerics) and JSON text
//! (json/jsonb columns) that must be copied through verbatim.

/// Appends `s` as a JSON string literal (quoted and escaped).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // Most strings need no escape: one branch-free pass (vectorised by the
    // compiler) decides, then a single copy (the byte loop below was 7% of
    // a search-sink profile).
    let needs_escape = bytes.iter().fold(false, |acc, &b| acc | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if !needs_escape {
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    out.push(b'"');
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

/// Formats microseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.ffffffZ`
/// (quoted), without allocating.
pub fn write_timestamp_micros(out: &mut Vec<u8>, micros: i64) {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000) as u64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u64;
    let (y, m, d) = civil_from_days(days);
    out.push(b'"');
    if (0..=9999).contains(&y) {
        push_digits(out, y as u64, 4);
    } else {
        // Outside four-digit years (not produced by PostgreSQL commit times).
        out.extend_from_slice(y.to_string().as_bytes());
    }
    out.push(b'-');
    push_digits(out, u64::from(m), 2);
    out.push(b'-');
    push_digits(out, u64::from(d), 2);
    out.push(b'T');
    push_digits(out, sod / 3600, 2);
    out.push(b':');
    push_digits(out, (sod / 60) % 60, 2);
    out.push(b':');
    push_digits(out, sod % 60, 2);
    out.push(b'.');
    push_digits(out, frac, 6);
    out.extend_from_slice(b"Z\"");
}

/// Appends `v` in decimal, zero-padded to `width` digits.
fn push_digits(out: &mut Vec<u8>, mut v: u64, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    let mut i = start + width;
    while v > 0 && i > start {
        i -= 1;
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Appends an unsigned integer in decimal.
pub fn write_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends an LSN as PostgreSQL writes it (`X/Y`, upper-case hex).
pub fn write_lsn(out: &mut Vec<u8>, lsn: u64) {
    write_hex(out, lsn >> 32);
    out.push(b'/');
    write_hex(out, lsn & 0xFFFF_FFFF);
}

fn write_hex(out: &mut Vec<u8>, v: u64) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = HEX[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
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

    #[test]
    fn formats_numbers_and_lsns_like_display() {
        for v in [0u64, 7, 10, 751, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            write_u64(&mut out, v);
            assert_eq!(out, v.to_string().into_bytes());
        }
        for v in [0u64, 0x16B3748, 1 << 32, u64::MAX, 0xABCDEF0123] {
            let mut out = Vec::new();
            write_lsn(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), crate::Lsn(v).to_string());
        }
    }
}
