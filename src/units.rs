//! Quantities people type into flags: durations (`500ms`, `10s`, `1m30s`; a
//! bare number is seconds) and byte sizes (`64KiB`, `1GiB`). One parser each,
//! for rexecd's flags and config file and for every rexec subcommand.

use std::time::Duration;

/// Longest duration accepted: about 31 years, far past any sane timeout.
const MAX_SECONDS: u64 = 1_000_000_000;

/// Parses `500ms`, `1.5s`, `10s`, `2m`, `1h`, compounds such as `1m30s` or
/// `1h 30m`, or a bare number of seconds. Whole numbers are exact;
/// fractions are rounded to the nanosecond.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration: expected e.g. 500ms, 10s, 2m".into());
    }
    let mut rest = text;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let unit_end = rest[number_end..]
            .find(|c: char| c.is_ascii_digit() || c == '.' || c == ' ')
            .map_or(rest.len(), |i| number_end + i);
        let nanos = parse_piece(text, &rest[..number_end], &rest[number_end..unit_end])?;
        total = total
            .checked_add(nanos)
            .filter(|n| *n <= MAX_SECONDS * 1_000_000_000)
            .ok_or_else(|| format!("duration '{text}' is too large"))?;
        rest = rest[unit_end..].trim_start();
    }
    Ok(Duration::from_nanos(total))
}

/// One `NUMBER UNIT` piece of `text`, in nanoseconds.
fn parse_piece(text: &str, number: &str, unit: &str) -> Result<u64, String> {
    let nanos_per_unit: u64 = match unit {
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
    Ok(nanos)
}

/// Parses a byte count for flags: `65536`, `64KiB`, `64MiB`, `1GiB` (also `K`, `M`, `G`, `KB`...).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: usize = number
        .parse()
        .map_err(|_| format!("invalid size '{text}': expected e.g. 1048576, 64KiB, 64MiB"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size unit '{other}' in '{text}': use KiB, MiB or GiB"
            ));
        }
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("size '{text}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2s500ms"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999999999999999999G").is_err());
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "s",
            "10x",
            "-1s",
            "1..2s",
            "1e999s",
            "99999999999999h",
            "1m 30x",
            "5000000000h 1s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} should fail");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_any_text(text in ".{0,24}") {
            let _ = parse_duration(&text);
        }

        #[test]
        fn whole_milliseconds_round_trip(ms in 0u64..10_000_000_000) {
            proptest::prop_assert_eq!(parse_duration(&format!("{ms}ms")), Ok(Duration::from_millis(ms)));
        }

        #[test]
        fn units_scale_consistently(n in 0u64..100_000) {
            proptest::prop_assert_eq!(parse_duration(&format!("{n}m")), parse_duration(&format!("{}s", n * 60)));
            proptest::prop_assert_eq!(parse_duration(&format!("{n}h")), parse_duration(&format!("{}m", n * 60)));
        }
    }
}
