//! Durations shown to people: to a sensible precision, in the units they
//! were likely set in (`1.5s`, `250ms`, `2m`), not `1.409301464s`.

use std::fmt;
use std::time::Duration;

/// Shows a duration with at most three significant digits in the largest
/// unit that keeps it at least 1: `1.5s`, `250ms`, `2m`, `1h 30m`, `80µs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShortDuration(pub(crate) Duration);

impl fmt::Display for ShortDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MINUTE: u64 = 60;
        const HOUR: u64 = 60 * MINUTE;
        // Rounded to three significant digits first, so that the unit is
        // chosen for what is shown (999.6 ms shows as 1s, not 1000ms).
        let d = if self.0.as_secs() >= MINUTE {
            // Whole seconds from a minute on.
            let half_up = u64::from(self.0.subsec_nanos() >= 500_000_000);
            Duration::from_secs(self.0.as_secs().saturating_add(half_up))
        } else {
            // Under a minute the nanoseconds fit a u64 whole.
            let rounded = round_to_3_digits(self.0.as_nanos());
            Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
        };
        let secs = d.as_secs();
        if secs >= HOUR {
            let minutes = (secs % HOUR) / MINUTE;
            return match minutes {
                0 => write!(f, "{}h", secs / HOUR),
                m => write!(f, "{}h {m}m", secs / HOUR),
            };
        }
        if secs >= MINUTE {
            return match secs % MINUTE {
                0 => write!(f, "{}m", secs / MINUTE),
                s => write!(f, "{}m {s}s", secs / MINUTE),
            };
        }
        let (value, unit) = if secs >= 1 {
            (d.as_secs_f64(), "s")
        } else if d.as_millis() >= 1 {
            (d.as_secs_f64() * 1e3, "ms")
        } else if d.as_micros() >= 1 {
            (d.as_secs_f64() * 1e6, "µs")
        } else {
            (d.as_secs_f64() * 1e9, "ns")
        };
        let text = format!("{value:.2}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        write!(f, "{text}{unit}")
    }
}

/// `n` rounded to its three most significant digits (half up).
fn round_to_3_digits(n: u128) -> u128 {
    let mut factor = 1u128;
    while n / factor >= 1000 {
        factor *= 10;
    }
    (n + factor / 2) / factor * factor
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(d: Duration) -> String {
        ShortDuration(d).to_string()
    }

    #[test]
    fn durations_are_shown_as_people_set_them() {
        assert_eq!(shown(Duration::from_millis(1500)), "1.5s");
        assert_eq!(shown(Duration::from_secs(3)), "3s");
        assert_eq!(shown(Duration::from_millis(250)), "250ms");
        assert_eq!(shown(Duration::from_nanos(1_409_301_464)), "1.41s");
        assert_eq!(shown(Duration::from_secs(120)), "2m");
        assert_eq!(shown(Duration::from_secs(125)), "2m 5s");
        assert_eq!(shown(Duration::from_secs(5400)), "1h 30m");
        assert_eq!(shown(Duration::from_micros(80)), "80µs");
        assert_eq!(shown(Duration::from_micros(12_340)), "12.3ms");
        assert_eq!(shown(Duration::ZERO), "0ns");
        // The unit is chosen after rounding.
        assert_eq!(shown(Duration::from_micros(999_600)), "1s");
        assert_eq!(shown(Duration::from_millis(59_970)), "1m");
        assert_eq!(shown(Duration::from_nanos(999_700)), "1ms");
        assert!(shown(Duration::MAX).starts_with("5124095576030431h"));
    }
}
