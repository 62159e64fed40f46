//! Listening sockets, bound by the supervisor before any worker exists.
//!
//! Each worker slot gets its own SO_REUSEPORT socket per address, so the kernel spreads
//! connections over workers and a respawned worker inherits its slot's accept queue.

use pgbouncers_worker::config::Config;
use socket2::{Domain, Socket, Type};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

pub struct Listeners {
    /// `tcp[slot]`: that slot's sockets, one per listen address.
    pub tcp: Vec<Vec<TcpListener>>,
    pub unix: Option<(UnixListener, PathBuf)>,
    /// The Unix socket file, removed when the supervisor is done with it.
    pub unix_path: Option<PathBuf>,
}

impl Drop for Listeners {
    fn drop(&mut self) {
        if let Some(path) = &self.unix_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The addresses `listen_addr` names: `*` is every IPv4 and IPv6 address.
pub fn addresses(cfg: &Config) -> io::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for a in &cfg.listen_addr {
        let a = a.trim();
        if a.is_empty() {
            continue;
        }
        if a == "*" {
            out.push(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                cfg.listen_port,
            ));
            out.push(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                cfg.listen_port,
            ));
            continue;
        }
        let host = a.trim_start_matches('[').trim_end_matches(']');
        for sa in (host, cfg.listen_port).to_socket_addrs()? {
            if !out.contains(&sa) {
                out.push(sa);
            }
        }
    }
    Ok(out)
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // `*` binds both families separately, so v6 sockets take v6 only.
        s.set_only_v6(true)?;
    }
    s.set_cloexec(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// Fails when another process already listens on `addr`. SO_REUSEPORT would otherwise let
/// a second pooler (or anything else run by the same user) share the port and silently
/// take a share of the connections.
fn ensure_free(addr: SocketAddr) -> io::Result<()> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.bind(&addr.into()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {addr}: {e} (is another pooler running?)"),
        )
    })
}

/// Binds every slot's sockets and the Unix socket.
pub fn bind(cfg: &Config, slots: usize) -> io::Result<Listeners> {
    let addrs = addresses(cfg)?;
    for &a in &addrs {
        ensure_free(a)?;
    }
    // The Unix socket first: whoever sees the TCP port answer (a start script, a test
    // harness) may use the socket at once.
    let unix = match &cfg.unix_socket_dir {
        Some(dir) if !dir.is_empty() => {
            Some(bind_unix(dir, cfg.listen_port, cfg.unix_socket_mode)?)
        }
        _ => None,
    };
    let mut tcp = Vec::with_capacity(slots);
    for _ in 0..slots {
        tcp.push(bind_slot(&addrs)?);
    }
    let unix_path = unix.as_ref().map(|(_, p)| p.clone());
    Ok(Listeners {
        tcp,
        unix,
        unix_path,
    })
}

/// Binds one more slot's TCP sockets (when `workers` grows on reload).
pub fn bind_slot(addrs: &[SocketAddr]) -> io::Result<Vec<TcpListener>> {
    addrs
        .iter()
        .map(|&a| {
            bind_tcp(a).map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))
        })
        .collect()
}

fn bind_unix(dir: &str, port: u16, mode: u32) -> io::Result<(UnixListener, PathBuf)> {
    let path = PathBuf::from(dir).join(format!(".s.PGSQL.{port}"));
    // A stale socket from a crashed run would make bind fail; a live one is in use.
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another process", path.display()),
            ));
        }
        let _ = std::fs::remove_file(&path);
    }
    let l = UnixListener::bind(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", path.display()),
        )
    })?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    Ok((l, path))
}
