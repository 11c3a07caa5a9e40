//! Per-shard listening sockets sharing one port through SO_REUSEPORT, so the kernel spreads
//! incoming connections over the shards without a shared accept queue.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn set_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` lives across the call and its size is passed alongside the pointer.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Bind a nonblocking listener with SO_REUSEADDR and SO_REUSEPORT set, listening with `backlog`.
pub fn bind_reuseport(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) has no memory arguments; the result is checked before use.
    let fd = check(unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    let (storage, len) = sockaddr(&addr);
    // SAFETY: `storage` holds a valid sockaddr of length `len`.
    check(unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) })?;
    let backlog = backlog.min(libc::c_int::MAX as u32) as libc::c_int;
    // SAFETY: plain syscall on a socket we own.
    check(unsafe { libc::listen(fd, backlog) })?;
    Ok(TcpListener::from(owned))
}

/// Bind `shards` listeners on `addr`: the first resolves port 0 to a real port, the rest bind
/// that resolved address.
pub fn bind_all(addr: SocketAddr, backlog: u32, shards: usize) -> io::Result<Vec<TcpListener>> {
    let first = bind_reuseport(addr, backlog)?;
    let resolved = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..shards {
        all.push(bind_reuseport(resolved, backlog)?);
    }
    Ok(all)
}

/// Disable Nagle on an accepted socket: frames are already batched by the writer.
pub fn set_nodelay(fd: &impl AsRawFd) -> io::Result<()> {
    set_int_opt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid for writes and `len` is its size.
        check(unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        })?;
        Ok(value)
    }

    #[test]
    fn port_zero_resolves_and_all_share_it() {
        let all = bind_all("127.0.0.1:0".parse().unwrap(), 128, 3).unwrap();
        let port = all[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        for l in &all {
            assert_eq!(l.local_addr().unwrap().port(), port);
            let fd = l.as_raw_fd();
            assert_eq!(
                get_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT).unwrap(),
                1
            );
            assert_eq!(
                get_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR).unwrap(),
                1
            );
            // SAFETY: fcntl F_GETFL on a descriptor we own.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            assert_ne!(flags & libc::O_NONBLOCK, 0);
        }
        // Connections go to one of the listeners; poll them all until one accepts.
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        client.write_all(b"x").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut accepted = loop {
            if let Some(s) = all.iter().find_map(|l| l.accept().ok()) {
                break s.0;
            }
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        set_nodelay(&accepted).unwrap();
        assert_eq!(
            get_int_opt(accepted.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY).unwrap(),
            1
        );
        accepted.set_nonblocking(false).unwrap();
        let mut b = [0u8; 1];
        accepted.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
    }

    #[test]
    fn ipv6_loopback_binds() {
        // Hosts without IPv6 fail with EADDRNOTAVAIL; only assert when it is available.
        if let Ok(l) = bind_reuseport("[::1]:0".parse().unwrap(), 16) {
            assert!(l.local_addr().unwrap().is_ipv6());
        }
    }
}
