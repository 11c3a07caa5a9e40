//! Which I/O driver a shard runs, one home for the rule: `--driver auto|uring|epoll`. `auto`
//! tries io_uring and falls back to epoll when the kernel refuses it (Docker's default seccomp
//! profile makes `io_uring_setup` fail with EPERM or ENOSYS; `kernel.io_uring_disabled`; a
//! kernel without the features the driver needs); `uring` fails instead. The environment can
//! refuse io_uring on purpose: [`REFUSE_ENV`] (the test hook for the fallback) or the old
//! [`LEGACY_ENV`]. The preflight report and the shards use the same [`resolve`].

use std::io;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// `--driver`: which driver to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    /// io_uring only; starting fails when it is unavailable.
    Uring,
    /// epoll.
    Epoll,
}

/// The driver a shard ended up with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverKind {
    /// Not started yet.
    Unknown = 0,
    /// io_uring.
    Uring = 1,
    /// epoll.
    Epoll = 2,
}

impl DriverKind {
    /// Name for logs and /stats.
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Unknown => "unknown",
            DriverKind::Uring => "io_uring",
            DriverKind::Epoll => "epoll",
        }
    }
}

/// Set to `1` (or `eperm`, `enosys`): io_uring set-up fails as a refusing kernel or seccomp
/// profile makes it fail, so `auto` falls back to epoll (tests run the suite this way).
pub const REFUSE_ENV: &str = "SHARDCAST_URING_REFUSE";

/// Honoured as an alias of [`REFUSE_ENV`]: the variable monoio's driver selection read.
pub const LEGACY_ENV: &str = "MONOIO_FORCE_LEGACY_DRIVER";

fn truthy(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "eperm" | "enosys"
    )
}

/// The error io_uring set-up must fail with because the environment refuses it, if it does
/// (checked by the io_uring driver before `io_uring_setup`).
pub fn refused_by_env() -> Option<io::Error> {
    if let Ok(v) = std::env::var(REFUSE_ENV) {
        if truthy(&v) {
            let errno = if v.eq_ignore_ascii_case("enosys") {
                libc::ENOSYS
            } else {
                libc::EPERM
            };
            return Some(io::Error::from_raw_os_error(errno));
        }
    }
    std::env::var(LEGACY_ENV)
        .is_ok_and(|v| truthy(&v))
        .then(|| io::Error::from_raw_os_error(libc::EPERM))
}

/// The variables refusing io_uring, if any is set (for messages): `A` or `A and B`.
pub fn refusing_env() -> Option<String> {
    let set: Vec<&str> = [REFUSE_ENV, LEGACY_ENV]
        .into_iter()
        .filter(|k| std::env::var(k).is_ok_and(|v| truthy(&v)))
        .collect();
    (!set.is_empty()).then(|| set.join(" and "))
}

/// Resolve `choice` given whether io_uring can be set up (`uring`: the set-up's result, or
/// its error). `auto` without io_uring is epoll; `uring` without it is an error saying why.
pub fn resolve(choice: Driver, uring: Result<(), &io::Error>) -> io::Result<DriverKind> {
    match (choice, uring) {
        (Driver::Epoll, _) => Ok(DriverKind::Epoll),
        (_, Ok(())) => Ok(DriverKind::Uring),
        (Driver::Auto, Err(_)) => Ok(DriverKind::Epoll),
        (Driver::Uring, Err(e)) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "driver=uring but io_uring is unavailable: {e}{}",
                refusing_env()
                    .map(|k| format!(" (refused by {k})"))
                    .unwrap_or_default()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution() {
        let refused = io::Error::from_raw_os_error(libc::EPERM);
        assert_eq!(resolve(Driver::Epoll, Ok(())).unwrap(), DriverKind::Epoll);
        assert_eq!(resolve(Driver::Auto, Ok(())).unwrap(), DriverKind::Uring);
        assert_eq!(
            resolve(Driver::Auto, Err(&refused)).unwrap(),
            DriverKind::Epoll
        );
        let e = resolve(Driver::Uring, Err(&refused)).unwrap_err();
        assert!(e.to_string().contains("io_uring is unavailable"), "{e}");
        assert_eq!(resolve(Driver::Uring, Ok(())).unwrap(), DriverKind::Uring);
        assert!(truthy("EPERM") && truthy("1") && !truthy("0") && !truthy(""));
    }
}
