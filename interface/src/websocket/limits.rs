//! The per-connection limits of established WebSockets, from their flags.
//!
//! Each limit guards the interface against one kind of client: pings keep
//! idle sockets alive through proxies, the idle timeout finds peers that are
//! gone without a FIN (they stop answering pings), the send queue and send
//! timeout stop a client that does not read from growing our memory, and the
//! message rate stops a client from flooding the workers. `docs/limits.md`
//! lists the outcomes. The flags live in `config.rs`; this turns them into
//! durations and checks how they fit together.

use std::time::Duration;

use anyhow::bail;

use crate::config::Config;

/// The limits as the connection task uses them; `None`: off.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnLimits {
    pub ping_interval: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    /// Events waiting for one client; 0: unbounded.
    pub max_send_queue: usize,
    pub send_timeout: Option<Duration>,
    /// Messages per second and burst.
    pub message_rate: Option<(f64, f64)>,
}

impl ConnLimits {
    pub fn of(config: &Config) -> ConnLimits {
        let seconds = |value: f64| (value > 0.0).then(|| Duration::from_secs_f64(value));
        let rate = config.max_message_rate;
        let burst = if config.message_burst == 0 {
            rate.max(1.0)
        } else {
            f64::from(config.message_burst)
        };
        ConnLimits {
            ping_interval: seconds(config.ping_interval),
            idle_timeout: seconds(config.idle_timeout),
            max_send_queue: config.max_send_queue,
            send_timeout: seconds(config.send_timeout),
            message_rate: (rate > 0.0).then_some((rate, burst)),
        }
    }

    /// Checks what one flag alone cannot; the error names the flag.
    pub fn validate(config: &Config) -> anyhow::Result<()> {
        let (ping, idle) = (config.ping_interval, config.idle_timeout);
        if ping > 0.0 && idle > 0.0 && idle <= ping {
            bail!(
                "--idle-timeout: {idle} s must exceed --ping-interval ({ping} s), or a quiet client \
                 is closed before it was even pinged"
            );
        }
        if config.message_burst > 0 && config.max_message_rate == 0.0 {
            bail!("--message-burst: needs --max-message-rate");
        }
        Ok(())
    }
}

/// Seconds in [0, 3600]; 0 turns the limit off.
pub fn parse_seconds_or_off(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(0.0..=3600.0).contains(&value) {
        return Err(format!("{value} is out of range [0, 3600] seconds (0: off)"));
    }
    Ok(value)
}

/// Messages per second in [0, 1000000]; 0 turns the limit off.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of messages per second"))?;
    if !(0.0..=1_000_000.0).contains(&value) {
        return Err(format!(
            "{value} is out of range [0, 1000000] messages per second (0: off)"
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Result<Config, String> {
        let argv = std::iter::once("switchyard-interface").chain(args.iter().copied());
        let config = Config::try_parse_from(argv).map_err(|e| e.to_string())?;
        ConnLimits::validate(&config).map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn defaults() {
        let limits = ConnLimits::of(&config(&[]).unwrap());
        assert_eq!(
            limits,
            ConnLimits {
                ping_interval: Some(Duration::from_secs(20)),
                idle_timeout: Some(Duration::from_secs(60)),
                max_send_queue: 1024,
                send_timeout: Some(Duration::from_secs(30)),
                message_rate: None,
            }
        );
    }

    #[test]
    fn zero_turns_limits_off() {
        let off = ["--ping-interval", "0", "--idle-timeout", "0", "--send-timeout", "0"];
        let limits = ConnLimits::of(&config(&off).unwrap());
        assert_eq!(
            (limits.ping_interval, limits.idle_timeout, limits.send_timeout),
            (None, None, None)
        );
        // Either alone may be off.
        assert!(config(&["--ping-interval", "0", "--idle-timeout", "5"]).is_ok());
        assert!(config(&["--ping-interval", "90", "--idle-timeout", "0"]).is_ok());
    }

    #[test]
    fn idle_timeout_must_exceed_the_ping_interval() {
        let error = config(&["--ping-interval", "30", "--idle-timeout", "30"]).unwrap_err();
        assert!(error.starts_with("--idle-timeout:"), "{error}");
        assert!(config(&["--ping-interval", "0.5", "--idle-timeout", "1.5"]).is_ok());
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (flag, value) in [
            ("--ping-interval", "-1"),
            ("--idle-timeout", "soon"),
            ("--send-timeout", "4000"),
            ("--max-send-queue", "-3"),
            ("--max-message-rate", "-1"),
            ("--message-burst", "x"),
        ] {
            let error = config(&[&format!("{flag}={value}")]).unwrap_err();
            assert!(error.contains(flag), "{flag} {value}: {error}");
        }
        let error = config(&["--message-burst", "5"]).unwrap_err();
        assert!(error.starts_with("--message-burst:"), "{error}");
    }

    #[test]
    fn burst_defaults_to_the_rate() {
        let limits = ConnLimits::of(&config(&["--max-message-rate", "20"]).unwrap());
        assert_eq!(limits.message_rate, Some((20.0, 20.0)));
        let limits = ConnLimits::of(&config(&["--max-message-rate", "0.5"]).unwrap());
        assert_eq!(limits.message_rate, Some((0.5, 1.0)));
        let limits = ConnLimits::of(&config(&["--max-message-rate", "2", "--message-burst", "8"]).unwrap());
        assert_eq!(limits.message_rate, Some((2.0, 8.0)));
    }

    #[test]
    fn every_flag_has_an_environment_variable() {
        let config = Config::try_parse_from(["switchyard-interface"]).unwrap();
        // Names only: setting them would race with the other tests.
        let help = <Config as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for name in [
            "SWITCHYARD_PING_INTERVAL",
            "SWITCHYARD_IDLE_TIMEOUT",
            "SWITCHYARD_MAX_SEND_QUEUE",
            "SWITCHYARD_SEND_TIMEOUT",
            "SWITCHYARD_MAX_MESSAGE_RATE",
            "SWITCHYARD_MESSAGE_BURST",
        ] {
            assert!(help.contains(name), "{name} missing from --help");
        }
        assert!(ConnLimits::validate(&config).is_ok());
    }
}
