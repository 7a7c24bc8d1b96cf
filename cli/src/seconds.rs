//! Duration flags, given in seconds (`--idle-timeout 60`, `--ping-interval 0.5`).
//!
//! Every binary reads its durations through [`between`], so every duration flag
//! accepts the same spellings (whole or fractional seconds), reports a bad value
//! the same way (the flag, the value and the allowed range), and arrives as a
//! [`Duration`]. Where 0 is in a flag's range it means "off"; [`off_if_zero`]
//! turns that into an `Option`.

use std::time::Duration;

/// A value parser for a duration flag in seconds within `[min, max]`.
pub fn between(min: f64, max: f64) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |text: &str| parse(text, min, max)
}

/// `text` as a number of seconds within `[min, max]`.
pub fn parse(text: &str, min: f64, max: f64) -> Result<Duration, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(min..=max).contains(&value) {
        let off = if min == 0.0 { " (0: off)" } else { "" };
        return Err(format!("{value} is out of range [{min}, {max}] seconds{off}"));
    }
    Ok(Duration::from_secs_f64(value))
}

/// `None` for a zero duration: the flag's way of saying "off".
pub fn off_if_zero(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}

/// One hour: the longest timeout a flag takes.
pub const HOUR: f64 = 3600.0;

/// Thirty days: the longest lifetime (TTL) a flag takes.
pub const THIRTY_DAYS: f64 = 30.0 * 86_400.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_and_fractional_seconds() {
        assert_eq!(parse("10", 0.0, HOUR), Ok(Duration::from_secs(10)));
        assert_eq!(parse("0.25", 0.0, HOUR), Ok(Duration::from_millis(250)));
        assert_eq!(parse("0", 0.0, HOUR), Ok(Duration::ZERO));
    }

    #[test]
    fn out_of_range_and_garbage_name_the_range() {
        assert_eq!(
            parse("0", 1.0, HOUR),
            Err("0 is out of range [1, 3600] seconds".to_owned())
        );
        assert_eq!(
            parse("4000", 0.0, HOUR),
            Err("4000 is out of range [0, 3600] seconds (0: off)".to_owned())
        );
        assert_eq!(
            parse("ten", 0.0, HOUR),
            Err("`ten` is not a number of seconds".to_owned())
        );
        assert!(parse("NaN", 0.0, HOUR).is_err());
        assert!(parse("-1", 0.0, HOUR).is_err());
    }

    #[test]
    fn zero_is_off() {
        assert_eq!(off_if_zero(Duration::ZERO), None);
        assert_eq!(off_if_zero(Duration::from_secs(1)), Some(Duration::from_secs(1)));
    }
}
