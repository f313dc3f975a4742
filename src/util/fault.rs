//! A test hook for killing a run at an exact point. With `PRETEXT_PAUSE_AT=<point>` in the
//! environment, the process writes the file named by `PRETEXT_PAUSE_MARKER` when it reaches
//! that point and then sleeps until it is killed, so a test can SIGKILL it in the middle of
//! an epoch or of a checkpoint write and check that `--resume` recovers. Points:
//! `step:N` (after optimizer step N), `checkpoint:E:model` (checkpoint E half written),
//! `checkpoint:E:renamed` (in place, `latest.json` not yet updated), `epoch-log:E`
//! (checkpointed, its metrics line not yet written). Unset, it costs one cached lookup.

use std::sync::OnceLock;

/// Pause here (forever) if the environment names this point.
pub fn pause_at(point: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let Some(at) = AT.get_or_init(|| std::env::var("PRETEXT_PAUSE_AT").ok()) else {
        return;
    };
    if at != point {
        return;
    }
    if let Some(marker) = std::env::var_os("PRETEXT_PAUSE_MARKER") {
        let _ = std::fs::write(marker, point);
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
