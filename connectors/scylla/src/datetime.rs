//! PostgreSQL's date and time text (as `to_jsonb` writes it) to CQL's
//! numbers, and those numbers back to text (for `verify`'s reports).
//!
//! PostgreSQL dates run from 4714-11-24 BC to 5874897-12-31, timestamps
//! from 4714-11-24 BC to 294276-12-31 23:59:59.999999, both in the
//! proleptic Gregorian calendar, written `YYYY-MM-DD[ BC]` with year 1 BC
//! right before year 1 (astronomical year 0). CQL `date` is an unsigned
//! 32-bit count of days centred on 1970-01-01 (2^31), about ±5.8 million
//! years: every finite PostgreSQL date fits. CQL `timestamp` is an i64 of
//! milliseconds since 1970: every finite PostgreSQL timestamp fits once its
//! microseconds are dropped (floored: the stored millisecond is the one the
//! instant falls in, also before 1970 and BC). Microseconds since 1970 do
//! NOT fit an i64 near year 294276, so sums are done in i128.
//!
//! `infinity` and `-infinity` have no CQL value: they are errors here (the
//! record is dead-lettered; a `text` column keeps them as text).

/// Days of the proleptic Gregorian date (`year` astronomical: 0 = 1 BC)
/// counted from 1970-01-01 (H. Hinnant's `days_from_civil`).
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`]: (astronomical year, month, day).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Exactly `n` ASCII digits as a number.
fn digits(s: &str, n: usize) -> Option<u32> {
    (s.len() == n && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

const INFINITE: &str = "has no CQL value (PostgreSQL's infinity); map the column to text to keep it";

/// `YYYY-MM-DD` (year of 4 or more digits) with `bc` from a ` BC` suffix
/// the caller removed: days since 1970-01-01.
fn date_body(s: &str, bc: bool) -> Result<i64, String> {
    let bad = || format!("is not a date (YYYY-MM-DD[ BC]): {s:?}");
    let mut it = s.splitn(3, '-');
    let (y, m, d) = (it.next().ok_or_else(bad)?, it.next().ok_or_else(bad)?, it.next().ok_or_else(bad)?);
    if y.len() < 4 || y.len() > 9 || !y.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let year: i64 = y.parse().map_err(|_| bad())?;
    let (month, day) = (digits(m, 2).ok_or_else(bad)?, digits(d, 2).ok_or_else(bad)?);
    // There is no year 0: 1 BC is followed by 1 AD.
    if year == 0 {
        return Err(bad());
    }
    let year = if bc { 1 - year } else { year };
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(bad());
    }
    Ok(days_from_civil(year, month, day))
}

fn strip_bc(s: &str) -> (&str, bool) {
    match s.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (s, false),
    }
}

/// A PostgreSQL `date` (`2024-02-29`, `0044-03-15 BC`, `5874897-12-31`) as
/// days since 1970-01-01. Anything else (a timestamp, `infinity`) is an
/// error saying why.
pub(crate) fn parse_date(s: &str) -> Result<i64, String> {
    if s == "infinity" || s == "-infinity" {
        return Err(format!("{s} {INFINITE}"));
    }
    let (body, bc) = strip_bc(s);
    date_body(body, bc)
}

/// A CQL `date` for `days` since 1970-01-01, if in its range.
pub(crate) fn cql_date(days: i64) -> Option<u32> {
    u32::try_from(days.checked_add(1 << 31)?).ok()
}

/// `HH:MM:SS[.fffffffff]` (no offset) as nanoseconds since midnight,
/// `00:00:00` up to and including `24:00:00` (PostgreSQL's `time` holds it).
pub(crate) fn parse_time_nanos(s: &str) -> Result<i64, String> {
    let bad = || format!("is not a time of day (HH:MM:SS[.ffffff]): {s:?}");
    let (hms, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut it = hms.splitn(3, ':');
    let h = digits(it.next().ok_or_else(bad)?, 2).ok_or_else(bad)?;
    let m = digits(it.next().ok_or_else(bad)?, 2).ok_or_else(bad)?;
    let sec = digits(it.next().ok_or_else(bad)?, 2).ok_or_else(bad)?;
    if frac.len() > 9 || (s.contains('.') && frac.is_empty()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if m > 59 || sec > 59 {
        return Err(bad());
    }
    let nanos: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().map_err(|_| bad())? };
    let total = ((i64::from(h) * 60 + i64::from(m)) * 60 + i64::from(sec)) * 1_000_000_000 + nanos;
    if total > 86_400_000_000_000 {
        return Err(bad());
    }
    Ok(total)
}

/// A UTC offset `+HH[:MM[:SS]]` / `-…` / `Z` in seconds east of UTC.
fn offset_seconds(o: &str) -> Option<i64> {
    if o == "Z" {
        return Some(0);
    }
    let sign = match o.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let mut secs = 0i64;
    let mut parts = 0;
    for (i, p) in o[1..].split(':').enumerate() {
        if i > 2 {
            return None;
        }
        secs += i64::from(digits(p, 2)?) * [3600, 60, 1][i];
        parts += 1;
    }
    (parts > 0).then_some(sign * secs)
}

/// A PostgreSQL `timestamp` or `timestamptz` as `to_jsonb` writes it
/// (`2024-02-29T01:02:03.123456`, `…+00:00`, `0001-01-01T00:00:00 BC`,
/// `294276-12-31T23:59:59.999999`) as microseconds since 1970 (i128: the
/// top of PostgreSQL's range does not fit an i64 of microseconds). Without
/// an offset the time is taken as UTC.
pub(crate) fn parse_timestamp_micros(s: &str) -> Result<i128, String> {
    if s == "infinity" || s == "-infinity" {
        return Err(format!("{s} {INFINITE}"));
    }
    let bad = || format!("is not a timestamp (YYYY-MM-DDTHH:MM:SS[.ffffff][+HH:MM][ BC]): {s:?}");
    let (body, bc) = strip_bc(s);
    let (date, rest) = body.split_once(['T', ' ']).ok_or_else(bad)?;
    let days = date_body(date, bc).map_err(|_| bad())?;
    let (time, offset) = match rest.find(['+', '-', 'Z']) {
        Some(i) => (&rest[..i], offset_seconds(&rest[i..]).ok_or_else(bad)?),
        None => (rest, 0),
    };
    let nanos = parse_time_nanos(time).map_err(|_| bad())?;
    // 24:00:00 is not a time of a timestamp.
    if nanos >= 86_400_000_000_000 {
        return Err(bad());
    }
    Ok(i128::from(days) * 86_400_000_000 + i128::from(nanos.div_euclid(1000)) - i128::from(offset) * 1_000_000)
}

/// A CQL `timestamp` (milliseconds since 1970, floored) for `micros`, if
/// an i64 holds it.
pub(crate) fn cql_timestamp(micros: i128) -> Option<i64> {
    i64::try_from(micros.div_euclid(1000)).ok()
}

/// A year in PostgreSQL's form: at least four digits, ` BC` for years <= 0.
fn year_text(year: i64) -> (String, &'static str) {
    if year <= 0 {
        (format!("{:04}", 1 - year), " BC")
    } else {
        (format!("{year:04}"), "")
    }
}

/// Days since 1970 as PostgreSQL writes a date (`0044-03-15 BC`).
pub(crate) fn format_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    let (year, bc) = year_text(y);
    format!("{year}-{m:02}-{d:02}{bc}")
}

/// Milliseconds since 1970 as `YYYY-MM-DDTHH:MM:SS.mmm+00:00[ BC]`.
pub(crate) fn format_timestamp_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (year, bc) = year_text(y);
    let (h, rest) = (in_day / 3_600_000, in_day % 3_600_000);
    let (min, rest) = (rest / 60_000, rest % 60_000);
    format!("{year}-{m:02}-{d:02}T{h:02}:{min:02}:{:02}.{:03}+00:00{bc}", rest / 1000, rest % 1000)
}

/// Nanoseconds since midnight as `HH:MM:SS.fffffffff`.
pub(crate) fn format_time_nanos(n: i64) -> String {
    let (secs, nanos) = (n.div_euclid(1_000_000_000), n.rem_euclid(1_000_000_000));
    format!("{:02}:{:02}:{:02}.{nanos:09}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Days since 1970 as PostgreSQL 15 computes them
    /// (`SELECT d - '1970-01-01'::date`).
    const DATES: &[(&str, i64)] = &[
        ("1970-01-01", 0),
        ("2024-02-29", 19_782),
        ("0001-01-01 BC", -719_528),
        ("0001-12-31 BC", -719_163),
        ("0044-03-15 BC", -735_160),
        ("4714-11-24 BC", -2_440_588),
        ("294276-12-31", 106_762_939),
        ("5874897-12-31", 2_145_042_905),
    ];

    #[test]
    fn dates_across_eras_and_edges() {
        for &(text, days) in DATES {
            assert_eq!(parse_date(text), Ok(days), "{text}");
            assert_eq!(format_date(days), text);
            assert!(cql_date(days).is_some(), "{text} fits a CQL date");
        }
        assert_eq!(cql_date(0), Some(1 << 31));
        assert_eq!(cql_date(-(1 << 31)), Some(0));
        assert_eq!(cql_date(1 << 31), None);
        assert!(parse_date("infinity").unwrap_err().contains("infinity"));
        assert!(parse_date("-infinity").is_err());
        for bad in
            ["2023-02-29", "0001-02-29", "0000-01-01", "0000-01-01 BC", "2024-13-01", "2024-1-01", "2024-01-01T00:00:00", "24-01-01", "x"]
        {
            assert!(parse_date(bad).is_err(), "{bad}");
        }
        // 1 BC (astronomical 0) and 5 BC are leap years; 101 BC is not.
        assert!(parse_date("0001-02-29 BC").is_ok());
        assert!(parse_date("0005-02-29 BC").is_ok());
        assert!(parse_date("0101-02-29 BC").is_err());
    }

    #[test]
    fn timestamps_in_i128_micros_and_floored_millis() {
        let day = 86_400_000_000i128;
        assert_eq!(parse_timestamp_micros("1970-01-01T00:00:01.5+00:00"), Ok(1_500_000));
        assert_eq!(parse_timestamp_micros("1970-01-01T01:00:00+01:00"), Ok(0));
        assert_eq!(parse_timestamp_micros("1970-01-01T00:00:00-05:30"), Ok(19_800_000_000));
        assert_eq!(parse_timestamp_micros("1970-01-01T00:00:00+00:53:28"), Ok(-3_208_000_000));
        assert_eq!(parse_timestamp_micros("2000-03-01T00:00:00"), Ok(951_868_800_000_000));
        assert_eq!(parse_timestamp_micros("2024-02-29T01:02:03.123456+00:00"), Ok(19_782 * day + 3_723_123_456));
        assert_eq!(parse_timestamp_micros("0001-01-01T00:00:00 BC"), Ok(-719_528 * day));
        assert_eq!(parse_timestamp_micros("0001-01-01T00:00:00+00:00 BC"), Ok(-719_528 * day));
        assert_eq!(parse_timestamp_micros("4714-11-24T00:00:00 BC"), Ok(-2_440_588 * day));
        let top = parse_timestamp_micros("294276-12-31T23:59:59.999999").unwrap();
        assert_eq!(top, 106_762_940 * day - 1);
        assert!(i64::try_from(top).is_err(), "microseconds at year 294276 overflow an i64");
        assert_eq!(cql_timestamp(top), Some(9_224_318_015_999_999));
        assert_eq!(format_timestamp_ms(9_224_318_015_999_999), "294276-12-31T23:59:59.999+00:00");
        // Floored, before 1970 too: 1969-12-31T23:59:59.9995 is in ms -1.
        assert_eq!(cql_timestamp(-500), Some(-1));
        assert_eq!(cql_timestamp(1_999), Some(1));
        let bc = parse_timestamp_micros("0044-03-15T12:34:56.789123 BC").unwrap();
        assert_eq!(cql_timestamp(bc), Some(-63_517_778_703_211));
        assert_eq!(format_timestamp_ms(-63_517_778_703_211), "0044-03-15T12:34:56.789+00:00 BC");
        for bad in ["infinity", "-infinity", "2024-02-29", "2024-02-29T24:00:00", "2024-02-29T01:02:03+5", "2024-02-30T00:00:00"] {
            assert!(parse_timestamp_micros(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_of_day() {
        assert_eq!(parse_time_nanos("00:00:01.000001"), Ok(1_000_001_000));
        assert_eq!(parse_time_nanos("23:59:59.999999"), Ok(86_399_999_999_000));
        assert_eq!(parse_time_nanos("24:00:00"), Ok(86_400_000_000_000));
        for bad in ["24:00:01", "12:00:00+05", "12:60:00", "12:00", "1:00:00", "12:00:00."] {
            assert!(parse_time_nanos(bad).is_err(), "{bad}");
        }
        assert_eq!(format_time_nanos(1_000_001_000), "00:00:01.000001000");
    }

    #[test]
    fn civil_round_trips() {
        for days in (-2_440_588i64..2_145_042_905).step_by(7_919_999) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
