//! The two socket calls the coalescing reader needs that neither tokio nor
//! socket2 offers: `SO_RCVLOWAT` (socket2 has no setter) and a read that
//! ignores tokio's cached readiness (the point is to read data that has not
//! woken anyone). Both are plain `libc` calls on a descriptor the caller
//! keeps open for the duration of the call.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

use bytes::BytesMut;

/// Sets `SO_RCVLOWAT`: the kernel wakes readers of the socket (epoll
/// included) only once this many bytes are queued, or at EOF/error. Setting
/// a lower value wakes a reader at once if that much is already queued.
pub(crate) fn set_rcvlowat(sock: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    let val = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is open (borrowed from `sock`), and the pointer
    // and length describe a live `c_int` that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Appends whatever the kernel has queued, up to `buf`'s spare capacity,
/// without waiting. `Ok(None)` when nothing is queued; `Ok(Some(0))` at EOF.
pub(crate) fn recv_now(sock: &impl AsRawFd, buf: &mut BytesMut) -> io::Result<Option<usize>> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: the kernel writes at most `spare.len()` bytes into memory that
    // `buf` owns and that no one else borrows during the call.
    let n = unsafe { libc::recv(sock.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    let n = n as usize;
    // SAFETY: the kernel initialized the first `n` bytes of the spare
    // capacity, and `n <= spare.len()`.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(Some(n))
}
