//! The control channel's sockets: a SOCK_SEQPACKET socketpair per worker and the memfd a reload travels in; the messages are the protocol crate's codec, re-exported here.
//!
//! Each worker slot has a SOCK_SEQPACKET socketpair; a record is one message, so nothing is
//! ever half-read. A reload carries the validated configuration as a sealed-in-memory file
//! (memfd) passed with SCM_RIGHTS, so every worker applies exactly the text the supervisor
//! checked, however the files on disk change meanwhile.

pub use pgbouncers_proto::control::*;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Writes `snap` into an anonymous in-memory file, rewound for reading.
pub fn snapshot_to_memfd(snap: &Snapshot) -> io::Result<OwnedFd> {
    use std::io::{Seek, Write};
    // SAFETY: memfd_create takes a NUL-terminated name and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"pgbouncers-reload".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nothing else.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(&snap.encode())?;
    f.seek(io::SeekFrom::Start(0))?;
    Ok(f.into())
}

/// Reads a snapshot from the start of `fd`. Every worker gets the same open file, so
/// positioned reads are used: a shared file offset must not be moved.
pub fn snapshot_from_fd(fd: OwnedFd) -> io::Result<Snapshot> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::from(fd);
    let len = f.metadata()?.len() as usize;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, 0)?;
    Snapshot::decode(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.0))
}

/// Sends one message, with a file descriptor attached when given. WouldBlock is returned
/// as an error for the caller to retry later.
pub fn send(sock: RawFd, msg: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [io::IoSlice::new(msg)];
    let fds;
    let cmsgs: &[ControlMessage] = match fd {
        Some(f) => {
            fds = [f];
            &[ControlMessage::ScmRights(&fds)]
        }
        None => &[],
    };
    sendmsg::<()>(
        sock,
        &iov,
        cmsgs,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map(|_| ())
    .map_err(io::Error::from)
}

/// Receives one message into `buf` and any file descriptor that came with it.
/// Ok(None) when nothing is waiting.
pub fn recv(sock: RawFd, buf: &mut [u8]) -> io::Result<Option<(usize, Option<OwnedFd>)>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = match recvmsg::<()>(
        sock,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    ) {
        Ok(m) => m,
        Err(nix::errno::Errno::EAGAIN) => return Ok(None),
        Err(nix::errno::Errno::EINTR) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut fd = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for f in fds {
                    // SAFETY: the kernel just installed this descriptor for us.
                    let owned = unsafe { OwnedFd::from_raw_fd(f) };
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
        }
    }
    let n = msg.bytes;
    if n == 0 && fd.is_none() {
        // A zero-length record means the peer closed its end.
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some((n, fd)))
}

/// A nonblocking, close-on-exec SOCK_SEQPACKET socketpair: (supervisor end, worker end).
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into the array; the result is checked.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The raw descriptor of anything that has one (for `send`/`recv`).
pub fn raw<T: AsRawFd>(t: &T) -> RawFd {
    t.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_travels_through_memfd_and_socketpair() {
        let snap = Snapshot {
            config_yaml: "listen_port: 1\n".into(),
            userlist: Some("\"a\" \"b\"\n".into()),
            hba: None,
        };
        let (a, b) = pair().unwrap();
        let memfd = snapshot_to_memfd(&snap).unwrap();
        let mut msg = Vec::new();
        Command::Reload.encode(&mut msg);
        send(a.as_raw_fd(), &msg, Some(memfd.as_raw_fd())).unwrap();
        drop(memfd);
        let mut buf = [0u8; MAX_MESSAGE];
        let (n, fd) = recv(b.as_raw_fd(), &mut buf).unwrap().unwrap();
        assert_eq!(Command::decode(&buf[..n]), Ok(Command::Reload));
        let fd = fd.unwrap();
        // Several workers read the same open file: each read starts at offset 0.
        let again = fd.try_clone().unwrap();
        assert_eq!(snapshot_from_fd(fd).unwrap(), snap);
        assert_eq!(snapshot_from_fd(again).unwrap(), snap);
        assert!(recv(b.as_raw_fd(), &mut buf).unwrap().is_none());
        drop(a);
        assert!(recv(b.as_raw_fd(), &mut buf).is_err());
    }
}
