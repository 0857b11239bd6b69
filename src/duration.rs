//! Human durations for flags: `500ms`, `10s`, `2m`, `1h`; a bare number is seconds.

use std::time::Duration;

/// Parses `500ms`, `1.5s`, `10s`, `2m`, `1h` or a bare number of seconds.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration '{text}': expected e.g. 500ms, 10s, 2m"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "invalid duration unit '{other}' in '{text}': use ms, s, m or h"
            ));
        }
    };
    let seconds = value * scale;
    if !seconds.is_finite() || seconds > 1e9 {
        return Err(format!("duration '{text}' is too large"));
    }
    Ok(Duration::from_secs_f64(seconds))
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
}
