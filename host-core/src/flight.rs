//! Single flight across processes: one process does a cache's slow work (an exchange
//! with Cloudsmith, a compile) while the others wait for its entry.
//!
//! The lock is `flock(2)` on a lock file beside the entry, through std's
//! [`File::try_lock`]: the kernel releases it when its holder exits or dies, so a crashed
//! holder never blocks the others past its own life. Waiting polls, bounded by the
//! caller's own time; a waiter that runs out of it goes ahead alone. Nothing here can
//! fail a call: a lock that cannot be taken (a read-only or full file system, a directory
//! that is a file) is reported as [`Flight::Alone`] and the caller works without it.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often a waiter looks again, at first; it backs off to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(5);
const MAX_POLL: Duration = Duration::from_millis(50);

/// Held while this process does the work for one entry; dropping it (or exiting)
/// releases the others.
#[derive(Debug)]
pub struct FlightLock {
    _file: File,
}

/// How a process stands for one entry's work.
#[derive(Debug)]
pub enum Flight {
    /// This process holds the lock: it does the work (after looking at the entry once
    /// more, since a holder may just have written it).
    Leader(FlightLock),
    /// Another process held the lock until `until`: go ahead alone.
    TimedOut,
    /// The lock could not be taken at all (the reason): go ahead alone.
    Alone(String),
}

/// The lock file of `entry`: `entry` with `.lock` appended to its name.
pub fn lock_path(entry: &Path) -> PathBuf {
    let mut name = entry.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    entry.with_file_name(name)
}

/// Takes the lock of `entry`, waiting for another holder until `until` at the latest.
/// The directory must exist (the caller creates it as it creates its entries).
pub fn lock(entry: &Path, until: Instant) -> Flight {
    let path = lock_path(entry);
    let mut options = OpenOptions::new();
    options.create(true).truncate(false).write(true);
    // The file holds nothing, but lives among private entries: keep it private too.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = match options.open(&path) {
        Ok(file) => file,
        Err(e) => return Flight::Alone(format!("lock file {}: {e}", path.display())),
    };
    let mut poll = FIRST_POLL;
    loop {
        match file.try_lock() {
            Ok(()) => return Flight::Leader(FlightLock { _file: file }),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => {
                return Flight::Alone(format!("lock file {}: {e}", path.display()))
            }
        }
        let now = Instant::now();
        if now >= until {
            return Flight::TimedOut;
        }
        std::thread::sleep(poll.min(until - now));
        poll = (poll * 2).min(MAX_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_leader_then_the_next_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let entry = dir.path().join("e.json");
        let Flight::Leader(held) = lock(&entry, Instant::now()) else {
            panic!("first lock not taken")
        };
        assert!(lock_path(&entry).ends_with("e.json.lock"));
        let started = Instant::now();
        assert!(matches!(
            lock(&entry, started + Duration::from_millis(100)),
            Flight::TimedOut
        ));
        assert!(started.elapsed() >= Duration::from_millis(100));
        // Released by another thread while this one waits.
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(held);
        });
        assert!(matches!(
            lock(&entry, Instant::now() + Duration::from_secs(5)),
            Flight::Leader(_)
        ));
        releaser.join().unwrap();
    }

    #[test]
    fn a_directory_that_is_a_file_means_alone() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let entry = file.path().join("e.json");
        assert!(matches!(lock(&entry, Instant::now()), Flight::Alone(why) if why.contains("lock file")));
    }
}
