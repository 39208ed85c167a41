//! Number columns: the server's digits are already JSON's, except NaN and
//! the infinities (strings in `to_jsonb`) and the floats PostgreSQL prints
//! with an exponent or as `-0`, which `to_jsonb` stores as `numeric` and so
//! prints in decimal. One scan of the text checks JSON's number grammar.

use pgfanout_sdk::{Text, Value};

use crate::pgoutput::DecodeError;

/// What a number column's text becomes.
pub(super) enum NumberKind {
    Number,
    /// NaN and the infinities: strings in JSON.
    NotFinite,
    /// A float PostgreSQL printed with an exponent (`1e+20`, `5e-324`) or as
    /// `-0`: `to_jsonb` stores it as a `numeric`, which prints it in decimal
    /// (`100000000000000000000`, `0`). The same value, in `to_jsonb`'s text.
    Rewritten(String),
}

impl NumberKind {
    pub(super) fn wrap(self, text: Text) -> Value {
        match self {
            NumberKind::Number => Value::Number(text),
            NumberKind::NotFinite => Value::String(text),
            NumberKind::Rewritten(s) => Value::Number(Text::from(s)),
        }
    }
}

pub(super) fn decode_number(text: &[u8]) -> Result<NumberKind, DecodeError> {
    match text {
        b"NaN" | b"Infinity" | b"-Infinity" => Ok(NumberKind::NotFinite),
        _ if !is_json_number(text) => Err(DecodeError::value("number", text, "not a JSON number")),
        // Integers and numerics never have an exponent; floats rarely do.
        _ if memchr::memchr2(b'e', b'E', text).is_some() || text == b"-0" => {
            let s = std::str::from_utf8(text).unwrap_or_default();
            Ok(pgfanout_sdk::exact::numeric_text(s).map_or(NumberKind::Number, NumberKind::Rewritten))
        }
        _ => Ok(NumberKind::Number),
    }
}

/// True when `b` matches JSON's number grammar (leading zeros in the
/// exponent allowed, as PostgreSQL writes `1e-07`).
fn is_json_number(b: &[u8]) -> bool {
    let int_start = usize::from(b.first() == Some(&b'-'));
    let mut i = digits_end(b, int_start);
    let int_len = i - int_start;
    if int_len == 0 || (int_len > 1 && b[int_start] == b'0') {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        let Some(end) = some_digits_end(b, i + 1) else {
            return false;
        };
        i = end;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let Some(end) = some_digits_end(b, i) else {
            return false;
        };
        i = end;
    }
    i == b.len()
}

/// Where the run of ASCII digits that starts at `i` ends.
fn digits_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    i
}

/// [`digits_end`] for a run that must hold at least one digit.
fn some_digits_end(b: &[u8], i: usize) -> Option<usize> {
    let end = digits_end(b, i);
    (end > i).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::is_json_number;

    #[test]
    fn json_number_grammar() {
        for ok in ["0", "-0", "7", "-12", "1.5", "0.25", "1e9", "1E+9", "1e-07", "-1.5e300", "10"] {
            assert!(is_json_number(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "-", "01", "-01", "1.", ".5", "1e", "1e+", "+1", "1.5.2", "1e5x", "NaN", " 1"] {
            assert!(!is_json_number(bad.as_bytes()), "{bad}");
        }
    }
}
