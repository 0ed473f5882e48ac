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
        let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        // One write per line, so concurrent threads do not interleave; a full or readerless
        // FIFO drops the line rather than blocking the shim.
        let line = format!(
            "time={}.{:06} level={} pid={} msg=\"{}\"\n",
            t.as_secs(),
            t.subsec_micros(),
            r.level().as_str().to_lowercase(),
            std::process::id(),
            r.args().to_string().replace('"', "\\\"")
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger at info level, or debug with `debug`.
pub fn init(debug: bool) {
    static LOGGER: StderrLog = StderrLog;
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(if debug { log::LevelFilter::Debug } else { log::LevelFilter::Info });
}
