//! `created_at` as RFC 3339 in UTC with a `Z`; any RFC 3339 offset is
//! accepted on input and converted to UTC. A time whose UTC year falls
//! outside 0000 to 9999 has no RFC 3339 form: it is refused on input
//! (`9999-12-31T23:59:59-01:00` is year 10000 in UTC) and never written.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

pub(crate) fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::Error as _;
    check_year(at).map_err(S::Error::custom)?;
    let mut buf = [0u8; 30];
    match write(at, &mut buf).and_then(|text| std::str::from_utf8(text).ok()) {
        Some(text) => s.serialize_str(text),
        // A leap second.
        None => s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Nanos, true)),
    }
}

/// The years RFC 3339 can write (four digits).
const YEARS: std::ops::RangeInclusive<i32> = 0..=9999;

/// Refuses a time whose UTC year RFC 3339 cannot write.
fn check_year(at: &DateTime<Utc>) -> Result<(), &'static str> {
    use chrono::Datelike;
    if YEARS.contains(&at.naive_utc().year()) {
        Ok(())
    } else {
        Err("created_at is outside the years 0000 to 9999 in UTC")
    }
}

/// Where `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` has its separators.
const PUNCTUATION: [(usize, u8); 7] = [
    (4, b'-'),
    (7, b'-'),
    (10, b'T'),
    (13, b':'),
    (16, b':'),
    (19, b'.'),
    (29, b'Z'),
];

/// Writes `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (ASCII) without allocating
/// (it runs for every packet); `None` outside years 0 to 9999 or on a
/// leap second, which the caller leaves to chrono.
pub(crate) fn write<'b>(at: &DateTime<Utc>, buf: &'b mut [u8; 30]) -> Option<&'b [u8; 30]> {
    use chrono::{Datelike, Timelike};
    // The UTC fields directly: `DateTime`'s own accessors apply the
    // (zero) offset again for each field.
    let at = at.naive_utc();
    let year = u32::try_from(at.year()).ok().filter(|year| *year <= 9999)?;
    let nanos = at.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let mut put = |at: usize, value: u32, width: usize| {
        let mut value = value;
        for slot in buf[at..at + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year, 4);
    put(5, at.month(), 2);
    put(8, at.day(), 2);
    put(11, at.hour(), 2);
    put(14, at.minute(), 2);
    put(17, at.second(), 2);
    put(20, nanos, 9);
    for (index, byte) in PUNCTUATION {
        buf[index] = byte;
    }
    Some(buf)
}

/// Reads the form [`write`] writes, the one every packet of this crate
/// carries, without chrono's general parser; `None` for anything else.
pub(crate) fn read(text: &[u8]) -> Option<DateTime<Utc>> {
    use chrono::NaiveDate;
    let bytes: &[u8; 30] = text.try_into().ok()?;
    if PUNCTUATION.iter().any(|&(at, byte)| bytes[at] != byte) {
        return None;
    }
    let number = |at: usize, width: usize| -> Option<u32> {
        bytes[at..at + width].iter().try_fold(0u32, |value, &byte| {
            byte.is_ascii_digit()
                .then(|| value * 10 + u32::from(byte - b'0'))
        })
    };
    let year = i32::try_from(number(0, 4)?).ok()?;
    let date = NaiveDate::from_ymd_opt(year, number(5, 2)?, number(8, 2)?)?;
    let second = number(17, 2)?;
    // A leap second (60) is left to chrono's parser.
    if second > 59 {
        return None;
    }
    let time = date.and_hms_nano_opt(number(11, 2)?, number(14, 2)?, second, number(20, 9)?)?;
    Some(time.and_utc())
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    if let Some(at) = read(text.as_bytes()) {
        return Ok(at);
    }
    let at = DateTime::parse_from_rfc3339(&text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|e| D::Error::custom(format_args!("created_at is not RFC 3339: {e}")))?;
    // In range with its offset, out of range in UTC: no packet.
    check_year(&at).map_err(D::Error::custom)?;
    Ok(at)
}

/// Writes `YYYY-MM-DDTHH:MM:SS.mmmZ`, the form log lines show a packet's
/// time in, without allocating; `None` where [`write`] gives up.
pub(crate) fn write_millis<'b>(at: &DateTime<Utc>, buf: &'b mut [u8; 24]) -> Option<&'b str> {
    let mut full = [0u8; 30];
    let full = write(at, &mut full)?;
    buf[..23].copy_from_slice(&full[..23]);
    buf[23] = b'Z';
    std::str::from_utf8(buf).ok()
}

/// Writes `YYYY-MM-DD HH:MM:SS,mmm`, the log line's time as the Python
/// original writes it (Python's `asctime`), without allocating; `None` where [`write`] gives up.
pub(crate) fn write_log_time<'b>(at: &DateTime<Utc>, buf: &'b mut [u8; 23]) -> Option<&'b str> {
    let mut full = [0u8; 30];
    let full = write(at, &mut full)?;
    buf.copy_from_slice(&full[..23]);
    buf[10] = b' ';
    buf[19] = b',';
    std::str::from_utf8(buf).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug)]
    struct Stamped(#[serde(with = "super")] DateTime<Utc>);

    fn read_json(text: &str) -> Result<DateTime<Utc>, serde_json::Error> {
        serde_json::from_str::<Stamped>(&format!("\"{text}\"")).map(|stamped| stamped.0)
    }

    #[test]
    fn times_whose_utc_year_has_no_four_digits_are_refused_both_ways() {
        for text in [
            // Year 10000 in UTC.
            "9999-12-31T23:59:59-01:00",
            "9999-12-31T23:59:59.999999999-00:01",
            // Year -1 in UTC.
            "0000-01-01T00:00:00+01:00",
            "0000-01-01T00:59:59.5+01:00",
        ] {
            let err = read_json(text).unwrap_err().to_string();
            assert!(
                err.contains("outside the years 0000 to 9999"),
                "{text}: {err}"
            );
        }
        // The edges themselves are times.
        for (text, back) in [
            ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59.000000000Z"),
            (
                "9999-12-31T23:59:59+01:00",
                "9999-12-31T22:59:59.000000000Z",
            ),
            ("0000-01-01T00:00:00Z", "0000-01-01T00:00:00.000000000Z"),
            (
                "0000-01-01T00:00:00-01:00",
                "0000-01-01T01:00:00.000000000Z",
            ),
            // The fast path's own form, at the edge.
            (
                "9999-12-31T23:59:59.999999999Z",
                "9999-12-31T23:59:59.999999999Z",
            ),
        ] {
            let at = read_json(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let written = serde_json::to_string(&Stamped(at)).unwrap();
            assert_eq!(written, format!("\"{back}\""), "{text}");
        }
        // A time built in code past 9999 (or before 0) is never written.
        for far in ["+10000-01-01T00:59:59Z", "-0001-12-31T23:00:00Z"] {
            let at: DateTime<Utc> = far.parse().unwrap();
            let err = serde_json::to_string(&Stamped(at)).unwrap_err().to_string();
            assert!(
                err.contains("outside the years 0000 to 9999"),
                "{far}: {err}"
            );
        }
    }
}
