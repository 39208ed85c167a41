//! PostgreSQL values (`to_jsonb()`-shaped [`Value`]s) to CQL values of a
//! column's type: the sink's type mapping (README.md, "Type mapping").
//!
//! Every value is taken from its text: numbers never pass through an `f64`
//! except into a CQL `float`/`double` column (the column itself only holds
//! floats; out of range is an error, not infinity or zero). A value the
//! column cannot hold exactly, beyond the documented differences
//! (milliseconds of a timestamp, an empty collection being null, a set's
//! order and duplicates), is an error for that record: it is rejected and
//! goes to the dead letters with the reason, and the sink moves on.

use std::net::IpAddr;

use pgfanout_sdk::Value;
use scylla::frame::response::result::{CollectionType, ColumnType, NativeType};
use scylla::value::{CqlDate, CqlDecimal, CqlTime, CqlTimestamp, CqlValue, CqlVarint};

use crate::datetime::{cql_date, cql_timestamp, parse_date, parse_time_nanos, parse_timestamp_micros};
use crate::error::ValueError;

/// The CQL value of `v` for a column of type `typ`. `None` is CQL null:
/// a NULL, and an empty array in a non-frozen list or set (Cassandra
/// stores an empty collection as no value at all).
pub fn to_cql(v: &Value, typ: &ColumnType<'_>) -> Result<Option<CqlValue>, ValueError> {
    match (v, typ) {
        (Value::Null, _) => Ok(None),
        (Value::Array(items), ColumnType::Collection { frozen: false, typ: CollectionType::List(_) | CollectionType::Set(_) })
            if items.is_empty() =>
        {
            Ok(None)
        }
        _ => value(v, typ).map(Some).map_err(|reason| ValueError { value: short(v), cql_type: type_name(typ), reason }),
    }
}

/// A non-null value; the error is the reason it does not fit (the
/// [`ValueError`]'s `reason`).
fn value(v: &Value, typ: &ColumnType<'_>) -> Result<CqlValue, String> {
    let n = match typ {
        ColumnType::Native(n) => n,
        ColumnType::Collection { typ: CollectionType::List(inner) | CollectionType::Set(inner), .. } => {
            let Value::Array(items) = v else { return Err("not an array".into()) };
            let mut out: Vec<CqlValue> = Vec::with_capacity(items.len());
            for item in items {
                if item.is_null() {
                    return Err("a CQL list or set cannot hold a NULL element; map the column to text to keep it".into());
                }
                let item = value(item, inner).map_err(|why| format!("element {}: {why}", short(item)))?;
                if matches!(typ, ColumnType::Collection { typ: CollectionType::Set(_), .. }) {
                    if !out.contains(&item) {
                        out.push(item);
                    }
                } else {
                    out.push(item);
                }
            }
            return Ok(match typ {
                ColumnType::Collection { typ: CollectionType::Set(_), .. } => CqlValue::Set(out),
                _ => CqlValue::List(out),
            });
        }
        _ => return Err("the scylla sink does not write this CQL type".into()),
    };
    let text = || match v {
        Value::String(s) => Ok(&**s),
        _ => Err("not text".to_string()),
    };
    Ok(match n {
        NativeType::Text => CqlValue::Text(v.to_template_text().into_owned()),
        NativeType::Ascii => {
            let t = v.to_template_text();
            if !t.is_ascii() {
                return Err("not ASCII; use a text column".into());
            }
            CqlValue::Ascii(t.into_owned())
        }
        NativeType::Boolean => match v {
            Value::Bool(b) => CqlValue::Boolean(*b),
            _ => return Err("not a boolean".into()),
        },
        NativeType::TinyInt => CqlValue::TinyInt(narrow(integer(v)?)?),
        NativeType::SmallInt => CqlValue::SmallInt(narrow(integer(v)?)?),
        NativeType::Int => CqlValue::Int(narrow(integer(v)?)?),
        NativeType::BigInt => CqlValue::BigInt(integer(v)?),
        NativeType::Float => CqlValue::Float(float::<f32>(number_text(v)?)?),
        NativeType::Double => CqlValue::Double(float::<f64>(number_text(v)?)?),
        NativeType::Decimal => {
            let (digits, scale) = decimal_parts(number_text(v)?)?;
            CqlValue::Decimal(CqlDecimal::from_signed_be_bytes_and_exponent(twos_complement(&digits)?, scale))
        }
        NativeType::Varint => {
            let (digits, scale) = decimal_parts(number_text(v)?)?;
            if scale != 0 {
                return Err("not an integer (no fraction or exponent); use a decimal column".into());
            }
            CqlValue::Varint(CqlVarint::from_signed_bytes_be(twos_complement(&digits)?))
        }
        NativeType::Uuid => CqlValue::Uuid(uuid(text()?)?),
        NativeType::Timeuuid => {
            let u = uuid(text()?)?;
            if u.get_version_num() != 1 {
                return Err("a timeuuid must be a version 1 UUID".into());
            }
            CqlValue::Timeuuid(u.into())
        }
        NativeType::Timestamp => match v {
            Value::String(s) => {
                let micros = parse_timestamp_micros(s)?;
                CqlValue::Timestamp(CqlTimestamp(cql_timestamp(micros).ok_or("out of the CQL timestamp range")?))
            }
            // Milliseconds since 1970, as given.
            Value::Number(_) => CqlValue::Timestamp(CqlTimestamp(integer(v)?)),
            _ => return Err("not a timestamp".into()),
        },
        NativeType::Date => CqlValue::Date(CqlDate(cql_date(parse_date(text()?)?).ok_or("out of the CQL date range")?)),
        NativeType::Time => {
            let t = text()?;
            if t.contains(['+', '-']) {
                return Err("a time with a UTC offset (timetz) has no CQL type; map the column to text".into());
            }
            let nanos = parse_time_nanos(t)?;
            if nanos >= 86_400_000_000_000 {
                return Err("24:00:00 has no CQL time (00:00:00 to 23:59:59.999999999)".into());
            }
            CqlValue::Time(CqlTime(nanos))
        }
        NativeType::Blob => CqlValue::Blob(parse_bytea(text()?).ok_or("not bytea in hex form (\\x...)")?),
        NativeType::Inet => CqlValue::Inet(inet(text()?)?),
        _ => return Err("the scylla sink does not write this CQL type".into()),
    })
}

/// The CQL name of a column type, for messages.
fn type_name(typ: &ColumnType<'_>) -> String {
    match typ {
        ColumnType::Native(n) => format!("{n:?}").to_lowercase(),
        ColumnType::Collection { frozen, typ } => {
            let inner = match typ {
                CollectionType::List(i) => format!("list<{}>", type_name(i)),
                CollectionType::Set(i) => format!("set<{}>", type_name(i)),
                CollectionType::Map(k, v) => format!("map<{}, {}>", type_name(k), type_name(v)),
                other => format!("{other:?}"),
            };
            if *frozen {
                format!("frozen<{inner}>")
            } else {
                inner
            }
        }
        other => format!("{other:?}"),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_json_string();
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// The text of a number: a JSON number, or a string (`"NaN"`, `"Infinity"`
/// of numeric and float columns, or a text column holding digits).
fn number_text(v: &Value) -> Result<&str, String> {
    match v {
        Value::Number(n) => Ok(n),
        Value::String(s) => Ok(s),
        _ => Err("not a number".into()),
    }
}

/// Integer text only: a fraction (even `.00`) or an exponent is refused.
fn integer(v: &Value) -> Result<i64, String> {
    let t = number_text(v)?;
    if !t.strip_prefix('-').unwrap_or(t).bytes().all(|b| b.is_ascii_digit()) {
        return Err("not an integer; use a decimal column".into());
    }
    t.parse().map_err(|_| "out of the range of a CQL bigint; use a varint or decimal column".to_string())
}

fn narrow<T: TryFrom<i64>>(i: i64) -> Result<T, String> {
    T::try_from(i).map_err(|_| "out of the column type's range".to_string())
}

/// Number text to the nearest float (the column holds nothing else).
/// NaN and ±Infinity are kept; a finite value that overflows to infinity,
/// or a non-zero one that rounds to zero, is refused.
fn float<F: std::str::FromStr + Into<f64> + Copy>(t: &str) -> Result<F, String> {
    let special = matches!(t, "NaN" | "Infinity" | "-Infinity");
    let text = match t {
        "Infinity" => "inf",
        "-Infinity" => "-inf",
        t => t,
    };
    if !special && (decimal_parts(t).is_err()) {
        return Err("not a number".into());
    }
    let f: F = text.parse().map_err(|_| "not a number".to_string())?;
    let wide: f64 = f.into();
    if !special && wide.is_infinite() {
        return Err("beyond the range of the CQL float type; use a decimal column".into());
    }
    if !special && wide == 0.0 && t.split(['e', 'E']).next().is_some_and(|m| m.bytes().any(|b| (b'1'..=b'9').contains(&b))) {
        return Err("too small for the CQL float type (it would be 0); use a decimal column".into());
    }
    Ok(f)
}

/// Decimal text (`-12.340`, `1e5`, `1.5e-07`) to (signed digits, scale):
/// the value is digits * 10^-scale. Digits keep their sign in front.
/// `NaN` and `Infinity` have no CQL decimal or varint.
fn decimal_parts(s: &str) -> Result<(String, i32), String> {
    if matches!(s, "NaN" | "Infinity" | "-Infinity") {
        return Err(format!("{s} has no CQL decimal or varint; map the column to text or double to keep it"));
    }
    let bad = || "not a number".to_string();
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], s[i + 1..].parse::<i32>().map_err(|_| bad())?),
        None => (s, 0),
    };
    let (neg, m) = match mantissa.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, mantissa.strip_prefix('+').unwrap_or(mantissa)),
    };
    let (int_part, frac) = m.split_once('.').unwrap_or((m, ""));
    if int_part.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    if !int_part.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let digits = format!("{}{int_part}{frac}", if neg { "-" } else { "" });
    let scale = i32::try_from(frac.len()).ok().and_then(|f| f.checked_sub(exp)).ok_or("exponent out of range")?;
    Ok((digits, scale))
}

/// Signed decimal digits to minimal big-endian two's complement bytes.
fn twos_complement(digits: &str) -> Result<Vec<u8>, String> {
    let (neg, d) = match digits.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, digits),
    };
    // Magnitude, little-endian base 256.
    let mut mag: Vec<u8> = vec![0];
    for c in d.bytes() {
        let mut carry = u32::from(c.checked_sub(b'0').filter(|d| *d < 10).ok_or("not a number")?);
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
    Ok(mag)
}

/// Big-endian two's complement bytes back to signed decimal digits (the
/// inverse of [`twos_complement`], for `verify`).
pub(crate) fn signed_digits(bytes: &[u8]) -> String {
    let neg = bytes.first().is_some_and(|b| b & 0x80 != 0);
    // Magnitude, big-endian.
    let mut mag: Vec<u8> = bytes.to_vec();
    if neg {
        let mut carry = 1u16;
        for byte in mag.iter_mut().rev() {
            let x = u16::from(!*byte) + carry;
            *byte = (x & 0xff) as u8;
            carry = x >> 8;
        }
    }
    let mut digits = Vec::new();
    while mag.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for byte in mag.iter_mut() {
            let x = (rem << 8) | u32::from(*byte);
            *byte = (x / 10) as u8;
            rem = x % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    if neg {
        digits.push(b'-');
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

/// A CQL decimal as text: `digits` scaled by `scale` (`12.340`, `1E+5`).
pub(crate) fn decimal_text(bytes: &[u8], scale: i32) -> String {
    let digits = signed_digits(bytes);
    if scale <= 0 {
        return if scale == 0 { digits } else { format!("{digits}E+{}", -i64::from(scale)) };
    }
    let (sign, d) = match digits.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", digits.as_str()),
    };
    let scale = scale as usize;
    let d = format!("{d:0>width$}", width = scale + 1);
    let (int_part, frac) = d.split_at(d.len() - scale);
    format!("{sign}{int_part}.{frac}")
}

fn uuid(s: &str) -> Result<uuid::Uuid, String> {
    uuid::Uuid::parse_str(s).map_err(|_| "not a UUID".to_string())
}

/// An `inet`/`cidr` value as an address. A network prefix shorter than the
/// address (`2001:db8::1/64`, `10.0.0.0/8`) has no place in a CQL inet and
/// is refused; `/32` (IPv4) and `/128` (IPv6) are the address itself.
fn inet(s: &str) -> Result<IpAddr, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| "not an IP address".to_string())?;
    let full = if ip.is_ipv4() { "32" } else { "128" };
    match prefix {
        None => Ok(ip),
        Some(p) if p == full => Ok(ip),
        Some(p) => Err(format!("a CQL inet holds an address without its network prefix (/{p}); map the column to text to keep the prefix")),
    }
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

    fn s(s: &str) -> Value {
        Value::String(s.into())
    }

    fn native(t: NativeType) -> ColumnType<'static> {
        ColumnType::Native(t)
    }

    fn cql(v: &Value, t: NativeType) -> Result<Option<CqlValue>, String> {
        to_cql(v, &native(t)).map_err(|e| e.to_string())
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
        assert_eq!(decimal_parts("1.5e+07").unwrap(), ("15".to_string(), -6));
        assert!(decimal_parts("NaN").unwrap_err().contains("NaN has no CQL decimal"));
        assert!(decimal_parts("1e99999999999").is_err());
        assert_eq!(cql(&n("7"), NativeType::Int).unwrap(), Some(CqlValue::Int(7)));
        assert!(cql(&n("3000000000"), NativeType::Int).is_err());
        assert!(cql(&n("7.0"), NativeType::Int).is_err());
        assert!(cql(&n("1e3"), NativeType::BigInt).is_err());
        assert!(cql(&n("9223372036854775808"), NativeType::BigInt).unwrap_err().contains("varint"));
        assert!(cql(&s("x"), NativeType::Int).is_err());
        assert_eq!(cql(&Value::Null, NativeType::Int).unwrap(), None);
    }

    /// Numerics of 60 to 400 digits go through as their digits, both ways.
    #[test]
    fn long_numerics_are_exact() {
        for text in [
            "1".repeat(60),
            format!("-{}", "9".repeat(131)),
            format!("{}.{}", "7".repeat(200), "3".repeat(200)),
            format!("1{}", "0".repeat(400)),
            format!("-0.{}1", "0".repeat(398)),
            "0.00".to_string(),
            "-12.50".to_string(),
        ] {
            let Some(CqlValue::Decimal(d)) = cql(&n(&text), NativeType::Decimal).unwrap() else { panic!("{text}") };
            let (bytes, scale) = d.as_signed_be_bytes_slice_and_exponent();
            assert_eq!(decimal_text(bytes, scale), text);
        }
        let big = format!("-{}", "8".repeat(400));
        let Some(CqlValue::Varint(v)) = cql(&n(&big), NativeType::Varint).unwrap() else { panic!() };
        assert_eq!(signed_digits(v.as_signed_bytes_be_slice()), big);
        assert!(cql(&n("1.5"), NativeType::Varint).is_err());
        for special in ["NaN", "Infinity", "-Infinity"] {
            assert!(cql(&s(special), NativeType::Decimal).unwrap_err().contains("has no CQL decimal"));
            assert!(cql(&s(special), NativeType::Varint).is_err());
        }
        // Exponents from float text stay exact.
        let Some(CqlValue::Decimal(d)) = cql(&n("1.5e-07"), NativeType::Decimal).unwrap() else { panic!() };
        let (bytes, scale) = d.as_signed_be_bytes_slice_and_exponent();
        assert_eq!(decimal_text(bytes, scale), "0.00000015");
        assert_eq!(decimal_text(&[1], -5), "1E+5");
    }

    #[test]
    fn floats_only_where_the_column_is_a_float() {
        assert_eq!(cql(&n("0.1"), NativeType::Float).unwrap(), Some(CqlValue::Float(0.1f32)));
        assert_eq!(cql(&n("0.1"), NativeType::Double).unwrap(), Some(CqlValue::Double(0.1)));
        assert!(matches!(cql(&s("NaN"), NativeType::Double).unwrap(), Some(CqlValue::Double(f)) if f.is_nan()));
        assert_eq!(cql(&s("-Infinity"), NativeType::Float).unwrap(), Some(CqlValue::Float(f32::NEG_INFINITY)));
        assert_eq!(cql(&n("340282350000000000000000000000000000000"), NativeType::Float).unwrap(), Some(CqlValue::Float(f32::MAX)));
        assert!(cql(&n("1e39"), NativeType::Float).unwrap_err().contains("beyond"));
        assert!(cql(&n(&format!("1{}", "0".repeat(400))), NativeType::Double).unwrap_err().contains("beyond"));
        assert!(cql(&n("1e-400"), NativeType::Double).unwrap_err().contains("too small"));
        assert_eq!(cql(&n("0.000"), NativeType::Double).unwrap(), Some(CqlValue::Double(0.0)));
        assert!(cql(&s("inf"), NativeType::Double).is_err());
    }

    #[test]
    fn dates_times_and_timestamps() {
        assert_eq!(cql(&s("0044-03-15 BC"), NativeType::Date).unwrap(), Some(CqlValue::Date(CqlDate((1 << 31) - 735_160))));
        assert_eq!(cql(&s("5874897-12-31"), NativeType::Date).unwrap(), Some(CqlValue::Date(CqlDate((1 << 31) + 2_145_042_905))));
        let e = cql(&s("infinity"), NativeType::Date).unwrap_err();
        assert!(e.contains("infinity has no CQL value") && e.contains("CQL date"), "{e}");
        assert!(cql(&s("2024-02-29T01:02:03"), NativeType::Date).is_err(), "a timestamp is not a date");
        assert_eq!(
            cql(&s("294276-12-31T23:59:59.999999"), NativeType::Timestamp).unwrap(),
            Some(CqlValue::Timestamp(CqlTimestamp(9_224_318_015_999_999)))
        );
        assert_eq!(
            cql(&s("0001-01-01T00:00:00+00:00 BC"), NativeType::Timestamp).unwrap(),
            Some(CqlValue::Timestamp(CqlTimestamp(-719_528 * 86_400_000)))
        );
        assert_eq!(
            cql(&s("2024-02-29T01:02:03.123456+00:00"), NativeType::Timestamp).unwrap(),
            Some(CqlValue::Timestamp(CqlTimestamp(1_709_168_523_123)))
        );
        assert!(cql(&s("-infinity"), NativeType::Timestamp).unwrap_err().contains("-infinity has no CQL value"));
        assert_eq!(cql(&n("1700000000000"), NativeType::Timestamp).unwrap(), Some(CqlValue::Timestamp(CqlTimestamp(1_700_000_000_000))));
        assert_eq!(cql(&s("23:59:59.999999"), NativeType::Time).unwrap(), Some(CqlValue::Time(CqlTime(86_399_999_999_000))));
        assert!(cql(&s("24:00:00"), NativeType::Time).unwrap_err().contains("24:00:00 has no CQL time"));
        assert!(cql(&s("12:00:00+05"), NativeType::Time).unwrap_err().contains("timetz"));
    }

    #[test]
    fn inet_keeps_the_address_or_refuses_a_prefix() {
        let ip = |t: &str| cql(&s(t), NativeType::Inet);
        assert_eq!(ip("10.0.0.1").unwrap(), Some(CqlValue::Inet("10.0.0.1".parse().unwrap())));
        assert_eq!(ip("10.0.0.1/32").unwrap(), Some(CqlValue::Inet("10.0.0.1".parse().unwrap())));
        assert_eq!(ip("2001:db8::1/128").unwrap(), Some(CqlValue::Inet("2001:db8::1".parse().unwrap())));
        assert!(ip("2001:db8::1/64").unwrap_err().contains("network prefix (/64)"));
        assert!(ip("10.0.0.0/8").is_err());
        assert!(ip("10.0.0.1/128").is_err());
        assert_eq!(cql(&s("2001:db8::1/64"), NativeType::Text).unwrap(), Some(CqlValue::Text("2001:db8::1/64".into())));
    }

    #[test]
    fn collections() {
        let list = ColumnType::Collection { frozen: false, typ: CollectionType::List(Box::new(native(NativeType::Int))) };
        let set = ColumnType::Collection { frozen: false, typ: CollectionType::Set(Box::new(native(NativeType::Int))) };
        let frozen = ColumnType::Collection { frozen: true, typ: CollectionType::List(Box::new(native(NativeType::Int))) };
        assert_eq!(to_cql(&Value::Array(vec![]), &list).unwrap(), None, "an empty collection is null in CQL");
        assert_eq!(to_cql(&Value::Array(vec![]), &set).unwrap(), None);
        assert_eq!(to_cql(&Value::Array(vec![]), &frozen).unwrap(), Some(CqlValue::List(vec![])));
        assert_eq!(
            to_cql(&Value::Array(vec![n("2"), n("1"), n("2")]), &set).unwrap(),
            Some(CqlValue::Set(vec![CqlValue::Int(2), CqlValue::Int(1)]))
        );
        let e = to_cql(&Value::Array(vec![n("1"), Value::Null]), &list).unwrap_err();
        assert!(e.reason.contains("NULL element"), "{e}");
        assert_eq!(e.cql_type, "list<int>");
        assert!(to_cql(&Value::Array(vec![n("1.5")]), &list).unwrap_err().reason.contains("element 1.5"));
        assert_eq!(
            to_cql(&Value::Array(vec![n("1"), Value::Null]), &native(NativeType::Text)).unwrap(),
            Some(CqlValue::Text("[1,null]".into()))
        );
    }

    #[test]
    fn other_natives() {
        assert!(cql(&s("é"), NativeType::Ascii).is_err());
        assert_eq!(parse_bytea("\\x00ff"), Some(vec![0, 255]));
        assert!(cql(&s("\\000"), NativeType::Blob).is_err());
        let v4 = "5f1d3f0e-8f4c-4c8e-9c1e-2b7f7f3c1a11";
        assert!(cql(&s(v4), NativeType::Uuid).unwrap().is_some());
        assert!(cql(&s(v4), NativeType::Timeuuid).unwrap_err().contains("version 1"));
        assert!(cql(&s("P1D"), NativeType::Duration).unwrap_err().contains("does not write"));
    }
}
