//! PostgreSQL values (`to_jsonb()`-shaped [`Value`]s) to CQL values of a
//! column's type. A value that does not fit is an error for that record
//! (it is rejected and goes to the dead letters).

use std::net::IpAddr;

use pgfanout_sdk::Value;
use scylla::frame::response::result::{CollectionType, ColumnType, NativeType};
use scylla::value::{CqlDate, CqlDecimal, CqlTime, CqlTimestamp, CqlValue, CqlVarint};

/// `None` is CQL null.
pub fn to_cql(v: &Value, typ: &ColumnType<'_>) -> Result<Option<CqlValue>, String> {
    if v.is_null() {
        return Ok(None);
    }
    let bad = || format!("value {} does not fit CQL type {typ:?}", short(v));
    let out = match typ {
        ColumnType::Native(n) => match n {
            NativeType::Text | NativeType::Ascii => CqlValue::Text(v.to_template_text().into_owned()),
            NativeType::Boolean => match v {
                Value::Bool(b) => CqlValue::Boolean(*b),
                _ => return Err(bad()),
            },
            NativeType::TinyInt => CqlValue::TinyInt(int(v).and_then(|i| i8::try_from(i).ok()).ok_or_else(bad)?),
            NativeType::SmallInt => CqlValue::SmallInt(int(v).and_then(|i| i16::try_from(i).ok()).ok_or_else(bad)?),
            NativeType::Int => CqlValue::Int(int(v).and_then(|i| i32::try_from(i).ok()).ok_or_else(bad)?),
            NativeType::BigInt => CqlValue::BigInt(int(v).ok_or_else(bad)?),
            NativeType::Float => CqlValue::Float(float(v).ok_or_else(bad)? as f32),
            NativeType::Double => CqlValue::Double(float(v).ok_or_else(bad)?),
            NativeType::Decimal => {
                let (digits, scale) = decimal_parts(number_text(v).ok_or_else(bad)?).ok_or_else(bad)?;
                CqlValue::Decimal(CqlDecimal::from_signed_be_bytes_and_exponent(twos_complement(&digits).ok_or_else(bad)?, scale))
            }
            NativeType::Varint => {
                let (digits, scale) = decimal_parts(number_text(v).ok_or_else(bad)?).ok_or_else(bad)?;
                if scale != 0 {
                    return Err(bad());
                }
                CqlValue::Varint(CqlVarint::from_signed_bytes_be(twos_complement(&digits).ok_or_else(bad)?))
            }
            NativeType::Uuid | NativeType::Timeuuid => {
                let u = match v {
                    Value::String(s) => uuid::Uuid::parse_str(s).map_err(|_| bad())?,
                    _ => return Err(bad()),
                };
                if *n == NativeType::Timeuuid {
                    CqlValue::Timeuuid(u.into())
                } else {
                    CqlValue::Uuid(u)
                }
            }
            NativeType::Timestamp => match v {
                Value::String(s) => CqlValue::Timestamp(CqlTimestamp(parse_timestamp_micros(s).ok_or_else(bad)?.div_euclid(1000))),
                Value::Number(_) => CqlValue::Timestamp(CqlTimestamp(int(v).ok_or_else(bad)?)),
                _ => return Err(bad()),
            },
            NativeType::Date => match v {
                Value::String(s) => {
                    let days = parse_date(s).ok_or_else(bad)?;
                    CqlValue::Date(CqlDate(u32::try_from(days + (1i64 << 31)).map_err(|_| bad())?))
                }
                _ => return Err(bad()),
            },
            NativeType::Time => match v {
                Value::String(s) => CqlValue::Time(CqlTime(parse_time_nanos(s).ok_or_else(bad)?)),
                _ => return Err(bad()),
            },
            NativeType::Blob => match v {
                Value::String(s) => CqlValue::Blob(parse_bytea(s).ok_or_else(bad)?),
                _ => return Err(bad()),
            },
            NativeType::Inet => match v {
                Value::String(s) => {
                    let addr = s.split_once('/').map_or(s.as_ref(), |(a, _)| a);
                    CqlValue::Inet(addr.parse::<IpAddr>().map_err(|_| bad())?)
                }
                _ => return Err(bad()),
            },
            _ => return Err(format!("CQL type {typ:?} is not supported by the scylla sink")),
        },
        ColumnType::Collection { typ: CollectionType::List(inner), .. }
        | ColumnType::Collection { typ: CollectionType::Set(inner), .. } => {
            let items = match v {
                Value::Array(items) => items.iter().map(|i| to_cql(i, inner)).collect::<Result<Vec<_>, _>>()?,
                _ => return Err(bad()),
            };
            let items = items.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| "null element in a CQL list/set".to_string())?;
            if matches!(typ, ColumnType::Collection { typ: CollectionType::Set(_), .. }) {
                CqlValue::Set(items)
            } else {
                CqlValue::List(items)
            }
        }
        _ => return Err(format!("CQL type {typ:?} is not supported by the scylla sink")),
    };
    Ok(Some(out))
}

fn short(v: &Value) -> String {
    let s = v.to_json_string();
    if s.len() > 80 {
        format!("{}…", &s[..s.char_indices().nth(80).map_or(s.len(), |(i, _)| i)])
    } else {
        s
    }
}

fn number_text(v: &Value) -> Option<&str> {
    match v {
        Value::Number(n) => Some(n),
        Value::String(s) => Some(s),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    number_text(v)?.parse().ok()
}

fn float(v: &Value) -> Option<f64> {
    match number_text(v)? {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        t => t.parse().ok(),
    }
}

/// Decimal text (`-12.340`, `1e5`) to (signed digits, scale): the value is
/// digits * 10^-scale. Digits keep their sign in front.
fn decimal_parts(s: &str) -> Option<(String, i32)> {
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], s[i + 1..].parse::<i32>().ok()?),
        None => (s, 0),
    };
    let (neg, m) = match mantissa.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, mantissa.strip_prefix('+').unwrap_or(mantissa)),
    };
    let (int_part, frac) = m.split_once('.').unwrap_or((m, ""));
    if int_part.is_empty() && frac.is_empty() {
        return None;
    }
    if !int_part.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let digits = format!("{}{int_part}{frac}", if neg { "-" } else { "" });
    let scale = i32::try_from(frac.len()).ok()?.checked_sub(exp)?;
    Some((digits, scale))
}

/// Signed decimal digits to minimal big-endian two's complement bytes.
fn twos_complement(digits: &str) -> Option<Vec<u8>> {
    let (neg, d) = match digits.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, digits),
    };
    // Magnitude, little-endian base 256.
    let mut mag: Vec<u8> = vec![0];
    for c in d.bytes() {
        let mut carry = u32::from(c.checked_sub(b'0')?);
        for byte in mag.iter_mut() {
            let x = u32::from(*byte) * 10 + carry;
            *byte = (x & 0xff) as u8;
            carry = x >> 8;
        }
        while carry > 0 {
            mag.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    if neg {
        // Two's complement: invert and add one.
        let mut carry = 1u16;
        for byte in mag.iter_mut() {
            let x = u16::from(!*byte) + carry;
            *byte = (x & 0xff) as u8;
            carry = x >> 8;
        }
    }
    mag.push(if neg { 0xff } else { 0 });
    // Trim redundant sign bytes.
    while mag.len() > 1 {
        let top = mag[mag.len() - 1];
        let next = mag[mag.len() - 2];
        if (top == 0 && next & 0x80 == 0) || (top == 0xff && next & 0x80 != 0) {
            mag.pop();
        } else {
            break;
        }
    }
    mag.reverse();
    Some(mag)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` (PostgreSQL writes BC years as `-YYYY`... not supported).
fn parse_date(s: &str) -> Option<i64> {
    let mut it = s.splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: u32 = it.next()?.parse().ok()?;
    let d: u32 = it.next()?.get(..2)?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// `HH:MM:SS[.ffffff]` to nanoseconds since midnight.
fn parse_time_nanos(s: &str) -> Option<i64> {
    let s = s.split(['+', '-']).next()?;
    let (hms, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut it = hms.split(':');
    let h: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let sec: i64 = it.next()?.parse().ok()?;
    if frac.len() > 9 || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let nanos: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().ok()? };
    Some(((h * 60 + m) * 60 + sec) * 1_000_000_000 + nanos)
}

/// ISO timestamps as `to_jsonb` writes them (`2026-11-24T10:00:00.123456`,
/// with `+00:00`/`Z`/`+05:30` for timestamptz) to microseconds since the epoch.
pub fn parse_timestamp_micros(s: &str) -> Option<i64> {
    let (date, rest) = s.split_once(['T', ' '])?;
    let days = parse_date(date)?;
    let (time, offset_secs) = match rest.find(['+', '-', 'Z']) {
        Some(i) => {
            let (t, o) = rest.split_at(i);
            let off = if o == "Z" {
                0
            } else {
                let sign = if o.starts_with('-') { -1 } else { 1 };
                let mut parts = o[1..].split(':');
                let h: i64 = parts.next()?.parse().ok()?;
                let m: i64 = parts.next().map_or(Some(0), |m| m.parse().ok())?;
                sign * (h * 3600 + m * 60)
            };
            (t, off)
        }
        None => (rest, 0),
    };
    let nanos = parse_time_nanos(time)?;
    Some(days * 86_400_000_000 + nanos / 1000 - offset_secs * 1_000_000)
}

/// bytea as `to_jsonb` writes it: `\x` and hex.
fn parse_bytea(s: &str) -> Option<Vec<u8>> {
    let hex = s.strip_prefix("\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Value {
        Value::Number(s.into())
    }

    #[test]
    fn numbers() {
        assert_eq!(twos_complement("0").unwrap(), vec![0]);
        assert_eq!(twos_complement("127").unwrap(), vec![0x7f]);
        assert_eq!(twos_complement("128").unwrap(), vec![0x00, 0x80]);
        assert_eq!(twos_complement("-1").unwrap(), vec![0xff]);
        assert_eq!(twos_complement("-128").unwrap(), vec![0x80]);
        assert_eq!(twos_complement("-129").unwrap(), vec![0xff, 0x7f]);
        assert_eq!(decimal_parts("-12.340").unwrap(), ("-12340".to_string(), 3));
        assert_eq!(decimal_parts("1e5").unwrap(), ("1".to_string(), -5));
        assert!(decimal_parts("NaN").is_none());
        let int = ColumnType::Native(NativeType::Int);
        assert_eq!(to_cql(&n("7"), &int).unwrap(), Some(CqlValue::Int(7)));
        assert!(to_cql(&n("3000000000"), &int).is_err());
        assert!(to_cql(&Value::String("x".into()), &int).is_err());
        assert_eq!(to_cql(&Value::Null, &int).unwrap(), None);
    }

    #[test]
    fn times() {
        assert_eq!(parse_timestamp_micros("1970-01-01T00:00:01.5+00:00"), Some(1_500_000));
        assert_eq!(parse_timestamp_micros("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_timestamp_micros("2000-03-01T00:00:00"), Some(951_868_800_000_000));
        assert_eq!(parse_date("1970-01-02"), Some(1));
        assert_eq!(parse_time_nanos("00:00:01.000001"), Some(1_000_001_000));
        assert_eq!(parse_bytea("\\x00ff"), Some(vec![0, 255]));
    }
}
