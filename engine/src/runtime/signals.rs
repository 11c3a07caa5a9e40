//! Signals without an async runtime: block them in every thread (the mask is inherited, so call
//! [`block`] before spawning) and wait for them on one plain thread with `sigwait`. [`serve`] is
//! that thread's loop: SIGHUP runs a callback (TLS certificate reload) and keeps waiting;
//! SIGINT/SIGTERM end it (graceful shutdown).

use std::io;

fn set_of(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialize it before any use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Block `signals` in the calling thread (and every thread it spawns afterwards).
pub fn block(signals: &[libc::c_int]) -> io::Result<()> {
    let set = set_of(signals);
    // SAFETY: `set` is initialized; the old mask is not requested.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Wait (blocking) until one of `signals` (which must be blocked) arrives; returns it.
pub fn wait(signals: &[libc::c_int]) -> io::Result<libc::c_int> {
    let set = set_of(signals);
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is initialized and `sig` is valid for the write.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(sig)
}

/// SIGINT and SIGTERM, the signals that trigger graceful shutdown.
pub const TERMINATION: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

/// Every signal the server handles: [`TERMINATION`] plus SIGHUP (reload). Block these at start.
pub const HANDLED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The signal thread: wait for [`HANDLED`] (blocked); call `on_hangup` for each SIGHUP and keep
/// waiting; return the first SIGINT or SIGTERM.
pub fn serve(mut on_hangup: impl FnMut()) -> io::Result<libc::c_int> {
    loop {
        match wait(&HANDLED)? {
            libc::SIGHUP => on_hangup(),
            sig => return Ok(sig),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::thread::JoinHandleExt;

    #[test]
    fn blocked_signal_is_received_by_sigwait() {
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            block(&[libc::SIGUSR2]).unwrap();
            tx.send(()).unwrap();
            wait(&[libc::SIGUSR2]).unwrap()
        });
        rx.recv().unwrap();
        // Directed at the waiting thread only, where it is blocked, so the default action
        // (terminate) cannot hit the test process.
        // SAFETY: the thread is alive (it is blocked in sigwait until this signal arrives).
        let rc = unsafe { libc::pthread_kill(h.as_pthread_t(), libc::SIGUSR2) };
        assert_eq!(rc, 0);
        assert_eq!(h.join().unwrap(), libc::SIGUSR2);
    }

    #[test]
    fn serve_runs_the_hangup_callback_until_termination() {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (hup_tx, hup_rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            block(&HANDLED).unwrap();
            ready_tx.send(()).unwrap();
            serve(|| hup_tx.send(()).unwrap()).unwrap()
        });
        ready_rx.recv().unwrap();
        let kill = |sig| {
            // SAFETY: the thread is alive until it receives SIGTERM, sent last; every signal is
            // blocked there, so none can take its default action.
            let rc = unsafe { libc::pthread_kill(h.as_pthread_t(), sig) };
            assert_eq!(rc, 0);
        };
        // One at a time: two pending SIGHUPs would merge into one.
        for _ in 0..2 {
            kill(libc::SIGHUP);
            hup_rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("SIGHUP ran the callback");
        }
        kill(libc::SIGTERM);
        assert_eq!(h.join().unwrap(), libc::SIGTERM);
        assert!(
            hup_rx.try_recv().is_err(),
            "exactly one callback per SIGHUP"
        );
    }
}
