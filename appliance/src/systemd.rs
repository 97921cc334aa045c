//! Running as a systemd service (issue 5): the `Type=notify` protocol over `NOTIFY_SOCKET`
//! (READY=1 once listening, STOPPING=1 on SIGTERM, WATCHDOG=1 at half of `WATCHDOG_USEC`)
//! through the small sd-notify crate (no libsystemd), and operational logs to the journal
//! through systemd-journal-logger. Outside systemd every call here is a no-op.

use std::time::Duration;

use systemd_journal_logger::JournalLog;

/// True when the service manager started us (`INVOCATION_ID`) or connected stderr to the
/// journal (`JOURNAL_STREAM`).
pub fn under_systemd() -> bool {
    std::env::var_os("INVOCATION_ID").is_some() || std::env::var_os("JOURNAL_STREAM").is_some()
}

/// Sends the operational log to the journal: `tracing` events become `log` records (the
/// `tracing/log` feature does that while no `tracing` subscriber is installed) and
/// systemd-journal-logger writes them with their target and level. The level is
/// `RUST_LOG` when it is a plain level name, else `info`. Returns false (and the caller
/// falls back to stderr) when the journal socket cannot be reached.
pub fn log_to_journal() -> bool {
    let Ok(journal) = JournalLog::new() else {
        return false;
    };
    if journal
        .with_syslog_identifier("strongroom".into())
        .install()
        .is_err()
    {
        return false;
    }
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.parse::<log::LevelFilter>().ok())
        .unwrap_or(log::LevelFilter::Info);
    log::set_max_level(level);
    true
}

fn send(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "could not notify the service manager");
    }
}

/// READY=1: the listener is bound and the KMS is serving.
pub fn ready() {
    send(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving"),
    ]);
}

/// STOPPING=1: SIGTERM arrived; in-flight requests are drained and the audit log closed.
pub fn stopping() {
    send(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("draining connections, closing the audit log"),
    ]);
}

/// The watchdog interval to ping at: half of `WATCHDOG_USEC` (when `WATCHDOG_PID`, if set,
/// is this process), or `None` when the service manager asked for no watchdog.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}

/// Pings WATCHDOG=1 from the async runtime at half of `WATCHDOG_USEC`, so a wedged runtime
/// (no task progress) gets the service restarted. Runs until the runtime stops.
pub fn spawn_watchdog() {
    let Some(every) = watchdog_interval() else {
        return;
    };
    tracing::info!(interval_ms = every.as_millis(), "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            send(&[sd_notify::NotifyState::Watchdog]);
        }
    });
}
