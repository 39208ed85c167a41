//! Date and timestamp columns: ISO text (DateStyle ISO, TimeZone UTC) to
//! the XSD form `to_jsonb` writes (`T` separator, `+HH:MM` offsets),
//! rendered into a caller's buffer or a per-thread one, never through
//! `format!`.

use pgfanout_sdk::Text;

use super::owned_text;
use crate::pgoutput::DecodeError;

/// A timestamp's XSD text, rendered in a buffer each thread reuses: a value
/// that fits `Text` inline (every one but the longest) allocates nothing.
pub(super) fn timestamp_text(text: &[u8], type_name: &'static str, with_tz: bool) -> Result<Text, DecodeError> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| {
        let mut out = scratch.borrow_mut();
        out.clear();
        iso_to_xsd_into(text, type_name, with_tz, &mut out)?;
        Ok(owned_text(&out))
    })
}

/// Rewrites ISO date/timestamp text into the XSD form `to_jsonb` uses,
/// appending to `out` (which keeps what it had, and may hold part of the
/// value when this fails): `2020-01-02 03:04:05.5+00` ->
/// `2020-01-02T03:04:05.5+00:00`. PostgreSQL 15 keeps the ` BC` suffix
/// (`0001-01-01T00:00:00 BC`); `infinity` and `-infinity` are unchanged.
pub(super) fn iso_to_xsd_into(text: &[u8], type_name: &'static str, with_tz: bool, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    if text == b"infinity" || text == b"-infinity" {
        out.extend_from_slice(text);
        return Ok(());
    }
    let (body, bc) = match text.strip_suffix(b" BC") {
        Some(b) => (b, true),
        None => (text, false),
    };
    let Some(first_digit) = body.first() else {
        return Err(DecodeError::value(type_name, text, "empty"));
    };
    if !first_digit.is_ascii_digit() {
        return Err(DecodeError::value(type_name, text, "expected an ISO date"));
    }
    let space = body.iter().position(|&b| b == b' ');
    match space {
        None => out.extend_from_slice(body),
        Some(sp) => {
            out.extend_from_slice(&body[..sp]);
            out.push(b'T');
            let time = &body[sp + 1..];
            if with_tz {
                let Some(sign) = time.iter().position(|&b| b == b'+' || b == b'-') else {
                    return Err(DecodeError::value(type_name, text, "missing UTC offset"));
                };
                out.extend_from_slice(&time[..sign]);
                let offset = &time[sign..];
                out.extend_from_slice(offset);
                // ISO prints +HH when the minutes are zero, XSD always +HH:MM.
                if !offset.contains(&b':') {
                    out.extend_from_slice(b":00");
                }
            } else {
                out.extend_from_slice(time);
            }
        }
    }
    if bc {
        out.extend_from_slice(b" BC");
    }
    Ok(())
}
