//! What pgfanout may have handed to its sinks, remembered across restarts,
//! so that a failover that happened while it was stopped is checked like
//! one seen while it ran (`SourceLoop::check_timeline`).
//!
//! A small local file per slot and database cluster (the system identifier,
//! which a promoted physical standby keeps) records the server's timeline
//! and a bound on the stream positions handed to the sinks. The bound is
//! raised before anything past it is handed over, by a margin
//! ([`MARGIN`]) so that a sustained stream writes the file about once per
//! 16 MiB of WAL; a clean stop writes the exact position. After a
//! failover, a fork point below the bound means the sinks may hold changes
//! the new primary lacks: `check_timeline` then stops or recovers as it
//! does for a failover seen live. A bound raised by the margin but never
//! reached (a SIGKILL) can only make that check cautious, never blind.
//!
//! The directory is `runtime.state_dir`, else `$STATE_DIRECTORY` (systemd),
//! else `$HOME/.local/state/pgfanout`. When none can be written, pgfanout
//! says so once and runs without it (a failover while it is stopped is
//! then not checked).

use std::path::{Path, PathBuf};

use pgfanout_sdk::Lsn;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// How far past the position handed over the recorded bound is set.
pub const MARGIN: u64 = 16 << 20;

/// The file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub system_id: String,
    pub timeline: u32,
    /// No stream position past this was handed to a sink.
    pub handed_below: String,
}

/// The state file of one slot; `None` path: not kept.
pub struct Handed {
    /// The directory; `None` once it proved unusable.
    dir: Option<PathBuf>,
    slot: String,
    system_id: String,
    timeline: u32,
    bound: Lsn,
    /// What was recorded when this run connected: a clean stop never
    /// records less (the sinks may still hold what an earlier run handed).
    floor: Lsn,
}

impl Handed {
    /// The file for `slot` in `dir` (see the module docs for the default).
    pub fn new(dir: Option<&Path>, slot: &str) -> Handed {
        let dir = dir.map(Path::to_path_buf).or_else(default_dir);
        let dir = match dir {
            Some(d) => match std::fs::create_dir_all(&d) {
                Ok(()) => Some(d),
                Err(e) => {
                    warn!(dir = %d.display(), error = %e, "cannot create the state directory (runtime.state_dir): a failover while pgfanout is stopped is not checked");
                    None
                }
            },
            None => {
                warn!("no state directory (runtime.state_dir, $STATE_DIRECTORY or $HOME): a failover while pgfanout is stopped is not checked");
                None
            }
        };
        Handed { dir, slot: slot.to_string(), system_id: String::new(), timeline: 0, bound: Lsn::ZERO, floor: Lsn::ZERO }
    }

    /// What the file says of this database cluster (`system_id`): its
    /// timeline and bound when pgfanout last ran against it.
    pub fn read(&self, system_id: &str) -> Option<(u32, Lsn)> {
        let text = std::fs::read_to_string(self.path(system_id)?).ok()?;
        let r: Recorded = serde_json::from_str(&text).ok()?;
        let bound = r.handed_below.parse().ok()?;
        (r.system_id == system_id).then_some((r.timeline, bound))
    }

    /// The server pgfanout streams from now, with everything handed so far
    /// below `handed`: recorded at once.
    pub fn connected(&mut self, system_id: &str, timeline: u32, handed: Lsn) {
        self.system_id = system_id.to_string();
        self.timeline = timeline;
        self.floor = handed;
        self.write(handed);
    }

    /// Before positions up to `upto` are handed over: raises the bound
    /// (with [`MARGIN`]) when they pass it.
    #[inline]
    pub fn before_handing(&mut self, upto: Lsn) {
        // Before the first connection (the initial snapshot) the rows are
        // versioned at the slot's start: nothing to record yet.
        if upto > self.bound && self.dir.is_some() && !self.system_id.is_empty() {
            self.write(Lsn(upto.0.saturating_add(MARGIN)));
        }
    }

    /// A clean stop: the exact position handed over.
    pub fn stopped(&mut self, handed: Lsn) {
        if !self.system_id.is_empty() {
            self.write(handed.max(self.floor));
        }
    }

    /// One file per slot and database cluster.
    fn path(&self, system_id: &str) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.join(format!("{}-{system_id}.handed.json", self.slot)))
    }

    fn write(&mut self, bound: Lsn) {
        let Some(path) = self.path(&self.system_id) else { return };
        let r = Recorded { system_id: self.system_id.clone(), timeline: self.timeline, handed_below: bound.to_string() };
        let tmp = path.with_extension("json.tmp");
        let written = (|| {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(serde_json::to_string(&r).unwrap_or_default().as_bytes())?;
            f.sync_data()?;
            std::fs::rename(&tmp, &path)
        })();
        match written {
            Ok(()) => self.bound = bound,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot write the state file: a failover while pgfanout is stopped is not checked");
                self.dir = None;
            }
        }
    }
}

fn default_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd may list several, separated by ':'.
        let first = d.to_string_lossy().split(':').next().unwrap_or_default().to_string();
        return Some(PathBuf::from(first));
    }
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".local/state/pgfanout"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_raised_by_the_margin_and_read_back_only_for_the_same_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = Handed::new(Some(dir.path()), "s");
        assert_eq!(h.read("42"), None);
        h.connected("42", 1, Lsn(100));
        assert_eq!(h.read("42"), Some((1, Lsn(100))));
        h.before_handing(Lsn(50));
        assert_eq!(h.read("42"), Some((1, Lsn(100))), "below the bound: nothing written");
        h.before_handing(Lsn(101));
        assert_eq!(h.read("42"), Some((1, Lsn(101 + MARGIN))));
        h.before_handing(Lsn(MARGIN));
        assert_eq!(h.read("42"), Some((1, Lsn(101 + MARGIN))), "within the margin: nothing written");
        h.stopped(Lsn(200));
        assert_eq!(h.read("42"), Some((1, Lsn(200))), "a clean stop writes the exact position");
        h.connected("42", 2, Lsn(300));
        h.stopped(Lsn(250));
        assert_eq!(h.read("42"), Some((2, Lsn(300))), "never less than what the run started with");
        assert_eq!(h.read("43"), None, "another cluster's file is not this one's");
        h.connected("43", 1, Lsn(7));
        assert_eq!((h.read("42"), h.read("43")), (Some((2, Lsn(300))), Some((1, Lsn(7)))), "one file per cluster");
    }
}
