//! Durations as `oha`, `ghz` and `wrk` users type them: `3s`, `500ms`,
//! `2m`, `1h`, `250us`, or a bare number of seconds (`1.5`).

use std::time::Duration;

/// The longest duration accepted (about 31 years): far beyond any use,
/// far below what overflows a deadline.
const MOST_SECONDS: f64 = 1e9;

/// Reads a duration: a number (decimals allowed) and a unit, `us`, `ms`,
/// `s`, `m` or `h`; without a unit, seconds. It must be above zero.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let seconds_per_unit = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use us, ms, s, m or h (e.g. 500ms, 3s, 2m), \
                 or a bare number of seconds"
            ));
        }
    };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("expected a duration such as 3s, 500ms, 2m or 1.5, got {text:?}"))?;
    let seconds = number * seconds_per_unit;
    if !(seconds > 0.0 && seconds < MOST_SECONDS) {
        return Err(format!(
            "{text:?}: a duration must be above zero (and below 1e9 s)"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bare_seconds() {
        for (text, expected) in [
            ("3s", Duration::from_secs(3)),
            ("500ms", Duration::from_millis(500)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("250us", Duration::from_micros(250)),
            ("10", Duration::from_secs(10)),
            ("1.5", Duration::from_millis(1500)),
            ("0.5s", Duration::from_millis(500)),
            (" 3 s ", Duration::from_secs(3)),
        ] {
            assert_eq!(parse(text), Ok(expected), "{text}");
        }
        for bad in [
            "", "0", "0s", "-1", "3x", "s", "1e99", "inf", "NaN", "3ss", ".", "1..2",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
