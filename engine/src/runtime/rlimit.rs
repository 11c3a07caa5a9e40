//! Raise the open-file limit: every connection is a descriptor, and the default soft limit
//! (often 1024) would cap the server far below `max_connections`.

use std::io;

/// Soft and hard RLIMIT_NOFILE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NofileLimit {
    /// Current (soft) limit.
    pub soft: u64,
    /// Ceiling the soft limit may be raised to without privileges.
    pub hard: u64,
}

/// Read RLIMIT_NOFILE.
pub fn nofile() -> io::Result<NofileLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit struct we own; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // rlim_t is u64 on Linux/glibc but not on every target.
    #[allow(clippy::unnecessary_cast)]
    Ok(NofileLimit {
        soft: lim.rlim_cur as u64,
        hard: lim.rlim_max as u64,
    })
}

/// Raise the soft RLIMIT_NOFILE to the hard limit; returns (before, after) and logs both.
pub fn raise_nofile() -> io::Result<(NofileLimit, NofileLimit)> {
    let before = nofile()?;
    if before.soft < before.hard {
        let lim = libc::rlimit {
            rlim_cur: before.hard as libc::rlim_t,
            rlim_max: before.hard as libc::rlim_t,
        };
        // SAFETY: setrlimit only reads the struct we pass by reference.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let after = nofile()?;
    tracing::info!(
        before = before.soft,
        after = after.soft,
        hard = after.hard,
        "RLIMIT_NOFILE"
    );
    Ok((before, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_reaches_hard_limit() {
        let (before, after) = raise_nofile().unwrap();
        assert!(before.soft <= before.hard);
        assert_eq!(after.soft, after.hard);
        assert_eq!(after, nofile().unwrap());
    }
}
