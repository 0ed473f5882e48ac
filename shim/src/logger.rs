//! The shim's log: plain lines on stderr, which `serve` points at the bundle's `log` FIFO
//! (containerd copies it into its own log).

use std::{io::Write, time::SystemTime};

struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        // One write per line, so concurrent threads do not interleave; a full or readerless
        // FIFO drops the line rather than blocking the shim.
        let line = format!(
            "time=\"{}\" level={} pid={} msg=\"{}\"\n",
            rfc3339(SystemTime::now()),
            r.level().as_str().to_lowercase(),
            std::process::id(),
            r.args().to_string().replace('"', "\\\"")
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// `t` in UTC as RFC 3339 with microseconds (`2026-11-23T18:30:00.123456Z`), as containerd
/// writes its own log times.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since the epoch to a civil date (the proleptic Gregorian calendar, in 400-year eras).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        d.subsec_micros()
    )
}

/// Sets the level of every later line (`-debug` at start, a config's `log_level` later).
pub fn set_level(level: log::LevelFilter) {
    log::set_max_level(level);
}

/// Installs the logger at info level, or debug with `debug`.
pub fn init(debug: bool) {
    static LOGGER: StderrLog = StderrLog;
    let _ = log::set_logger(&LOGGER);
    set_level(if debug { log::LevelFilter::Debug } else { log::LevelFilter::Info });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        let at = |secs: u64, micros: u64| {
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(at(1_795_456_212, 85_767), "2026-11-23T17:50:12.085767Z");
    }
}
