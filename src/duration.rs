//! Human durations for flags: `500ms`, `10s`, `2m`, `1h`; a bare number is seconds.

use std::time::Duration;

/// Longest duration accepted: about 31 years, far past any sane timeout.
const MAX_SECONDS: u64 = 1_000_000_000;

/// Parses `500ms`, `1.5s`, `10s`, `2m`, `1h` or a bare number of seconds.
/// Whole numbers are exact; fractions are rounded to the nanosecond.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let nanos_per_unit: u64 = match unit.trim() {
        "ms" => 1_000_000,
        "" | "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        other => {
            return Err(format!(
                "invalid duration unit '{other}' in '{text}': use ms, s, m or h"
            ));
        }
    };
    let invalid = || format!("invalid duration '{text}': expected e.g. 500ms, 10s, 2m");
    let too_large = || format!("duration '{text}' is too large");
    let nanos = if number.contains('.') {
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let nanos = (value * nanos_per_unit as f64).round();
        if !nanos.is_finite() || nanos > (MAX_SECONDS as f64) * 1e9 {
            return Err(too_large());
        }
        nanos as u64
    } else {
        let value: u64 = number.parse().map_err(|_| invalid())?;
        value.checked_mul(nanos_per_unit).ok_or_else(too_large)?
    };
    if nanos > MAX_SECONDS * 1_000_000_000 {
        return Err(too_large());
    }
    Ok(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "s", "10x", "-1s", "1..2s", "1e999s", "99999999999999h"] {
            assert!(parse(bad).is_err(), "{bad} should fail");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_any_text(text in ".{0,24}") {
            let _ = parse(&text);
        }

        #[test]
        fn whole_milliseconds_round_trip(ms in 0u64..10_000_000_000) {
            proptest::prop_assert_eq!(parse(&format!("{ms}ms")), Ok(Duration::from_millis(ms)));
        }

        #[test]
        fn units_scale_consistently(n in 0u64..100_000) {
            proptest::prop_assert_eq!(parse(&format!("{n}m")), parse(&format!("{}s", n * 60)));
            proptest::prop_assert_eq!(parse(&format!("{n}h")), parse(&format!("{}m", n * 60)));
        }
    }
}
