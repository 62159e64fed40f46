//! Host name lookups off the event loop: one resolver thread per worker, and a cache.
//!
//! getaddrinfo blocks, for seconds when a name server is slow, and a blocked loop stalls
//! every client of the worker. So the loop only reads the cache; a miss queues the name
//! for the resolver thread, which answers through a channel and wakes the loop. Answers
//! are kept for `dns_max_ttl` (failures for `dns_nxdomain_ttl`), as PgBouncer keeps them.
//! IP literals never reach the thread.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the cache can say about a host now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Ready(SocketAddr),
    /// Asked; the loop is woken when the answer comes.
    Pending,
    /// The last lookup failed, and its failure is still fresh.
    Failed(String),
}

type Key = (String, u16);
type Answer = Result<Vec<SocketAddr>, String>;

struct Entry {
    /// Addresses in resolver order; used round-robin, as PgBouncer does.
    result: Result<Vec<SocketAddr>, String>,
    at: Instant,
    next: usize,
}

pub struct Resolver {
    /// Dropping it (with the worker) ends the thread after its current lookup.
    ask: Sender<Key>,
    answers: Receiver<(Key, Answer)>,
    cache: HashMap<Key, Entry>,
    /// Names the thread is working on: asked once, however many launches want them.
    asked: Vec<Key>,
}

impl Resolver {
    /// Starts the resolver thread; `waker` is the loop's, called after every answer.
    pub fn start(waker: Arc<mio::Waker>) -> io::Result<Resolver> {
        Resolver::start_with(waker, resolve)
    }

    /// [`Resolver::start`] with the blocking lookup passed in.
    fn start_with(
        waker: Arc<mio::Waker>,
        resolve: fn(&str, u16) -> Answer,
    ) -> io::Result<Resolver> {
        let (ask, questions) = mpsc::channel::<Key>();
        let (reply, answers) = mpsc::channel();
        std::thread::Builder::new()
            .name("resolver".into())
            .spawn(move || {
                // Ends when the worker drops its sender.
                for key in questions {
                    let result = resolve(&key.0, key.1);
                    if reply.send((key, result)).is_err() {
                        return;
                    }
                    let _ = waker.wake();
                }
            })?;
        Ok(Resolver {
            ask,
            answers,
            cache: HashMap::new(),
            asked: Vec::new(),
        })
    }

    /// The address to connect to for `host:port`, from the cache, or Pending after
    /// asking the thread. An entry older than its TTL is refreshed, and used meanwhile
    /// if it holds addresses (a server that moved is found at the next refresh).
    pub fn lookup(
        &mut self,
        host: &str,
        port: u16,
        now: Instant,
        max_ttl: Duration,
        nxdomain_ttl: Duration,
    ) -> Lookup {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Lookup::Ready(SocketAddr::new(ip, port));
        }
        let key = (host.to_string(), port);
        let stale = match self.cache.get(&key) {
            Some(e) => {
                let ttl = if e.result.is_ok() {
                    max_ttl
                } else {
                    nxdomain_ttl
                };
                now.duration_since(e.at) >= ttl
            }
            None => true,
        };
        if stale && !self.asked.contains(&key) && self.ask.send(key.clone()).is_ok() {
            self.asked.push(key.clone());
        }
        match self.cache.get_mut(&key) {
            Some(Entry {
                result: Ok(addrs),
                next,
                ..
            }) if !addrs.is_empty() => {
                let a = addrs[*next % addrs.len()];
                *next = next.wrapping_add(1);
                Lookup::Ready(a)
            }
            Some(Entry { result: Err(e), .. }) if !stale => Lookup::Failed(e.clone()),
            _ => Lookup::Pending,
        }
    }

    /// Takes the thread's answers into the cache; true when any came.
    pub fn collect(&mut self, now: Instant) -> bool {
        let mut any = false;
        while let Ok((key, result)) = self.answers.try_recv() {
            self.asked.retain(|k| *k != key);
            if let Err(e) = &result {
                log::warn!("DNS lookup failed for {}: {e}", key.0);
            }
            self.cache.insert(
                key,
                Entry {
                    result,
                    at: now,
                    next: 0,
                },
            );
            any = true;
        }
        any
    }

    /// The cache, one row per host name (its freshest entry): the name, seconds until it
    /// is looked up again (0 when due), and its addresses (none after a failed lookup),
    /// as PgBouncer's SHOW DNS_HOSTS gives them. `ttls` as in [`Resolver::resolves_to`].
    pub fn hosts(&self, now: Instant, ttls: (Duration, Duration)) -> Vec<(String, u64, String)> {
        let mut rows: Vec<(String, u64, String)> = Vec::new();
        for ((name, _), e) in &self.cache {
            let ttl = if e.result.is_ok() { ttls.0 } else { ttls.1 };
            let left = ttl.saturating_sub(now.duration_since(e.at)).as_secs();
            let addrs = match &e.result {
                Ok(a) => a
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                Err(_) => String::new(),
            };
            match rows.iter_mut().find(|r| r.0 == *name) {
                Some(r) if r.1 >= left => {}
                Some(r) => *r = (name.clone(), left, addrs),
                None => rows.push((name.clone(), left, addrs)),
            }
        }
        rows.sort();
        rows
    }

    /// Whether `host` resolved to `ip` in the cache's last answer. Like [`Resolver::lookup`]
    /// it asks the thread when the answer is missing or stale, so a later call may say yes.
    /// `ttls` are `dns_max_ttl` and `dns_nxdomain_ttl`.
    pub fn resolves_to(
        &mut self,
        (host, port): (&str, u16),
        ip: IpAddr,
        now: Instant,
        ttls: (Duration, Duration),
    ) -> bool {
        if let Lookup::Ready(a) = self.lookup(host, port, now, ttls.0, ttls.1) {
            if a.ip() == ip {
                return true;
            }
        }
        matches!(self.cache.get(&(host.to_string(), port)),
            Some(Entry { result: Ok(addrs), .. }) if addrs.iter().any(|a| a.ip() == ip))
    }
}

/// One blocking lookup, on the resolver thread.
fn resolve(host: &str, port: u16) -> Answer {
    match (host, port).to_socket_addrs() {
        Ok(a) => {
            let mut addrs: Vec<SocketAddr> = a.collect();
            addrs.dedup();
            if addrs.is_empty() {
                Err("host name has no addresses".into())
            } else {
                Ok(addrs)
            }
        }
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll, Token};

    const TTL: Duration = Duration::from_secs(15);

    /// A resolver whose lookups need no network: `localhost` from the system, and a
    /// made-up name that never exists.
    fn resolver() -> (Poll, Resolver) {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), Token(7)).unwrap());
        fn local_only(host: &str, port: u16) -> Answer {
            match host {
                "localhost" => resolve(host, port),
                _ => Err("Name or service not known".into()),
            }
        }
        (poll, Resolver::start_with(waker, local_only).unwrap())
    }

    /// Waits for the thread's wake-up and collects its answers.
    fn wait(poll: &mut Poll, r: &mut Resolver) {
        let mut events = Events::with_capacity(4);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !r.collect(Instant::now()) {
            assert!(
                Instant::now() < deadline,
                "no answer from the resolver thread"
            );
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
        }
    }

    #[test]
    fn literals_never_wait() {
        let (_poll, mut r) = resolver();
        let now = Instant::now();
        assert_eq!(
            r.lookup("127.0.0.1", 5432, now, TTL, TTL),
            Lookup::Ready("127.0.0.1:5432".parse().unwrap())
        );
        assert_eq!(
            r.lookup("::1", 6, now, TTL, TTL),
            Lookup::Ready("[::1]:6".parse().unwrap())
        );
        assert!(r.asked.is_empty());
    }

    #[test]
    fn a_name_is_asked_once_then_served_from_the_cache() {
        let (mut poll, mut r) = resolver();
        let now = Instant::now();
        assert_eq!(r.lookup("localhost", 5432, now, TTL, TTL), Lookup::Pending);
        assert_eq!(r.lookup("localhost", 5432, now, TTL, TTL), Lookup::Pending);
        assert_eq!(r.asked.len(), 1, "asked twice");
        wait(&mut poll, &mut r);
        match r.lookup("localhost", 5432, Instant::now(), TTL, TTL) {
            Lookup::Ready(a) => {
                assert!(a.ip().is_loopback());
                assert_eq!(a.port(), 5432);
            }
            other => panic!("{other:?}"),
        }
        assert!(r.asked.is_empty());
        // Past the TTL the old answer serves while a refresh is asked.
        let later = Instant::now() + TTL;
        assert!(matches!(
            r.lookup("localhost", 5432, later, TTL, TTL),
            Lookup::Ready(_)
        ));
        assert_eq!(r.asked.len(), 1);
    }

    #[test]
    fn hosts_lists_each_name_once_with_its_ttl_left() {
        let (mut poll, mut r) = resolver();
        let t0 = Instant::now();
        for (host, port) in [("localhost", 5432), ("localhost", 6432), ("nowhere", 1)] {
            assert_eq!(r.lookup(host, port, t0, TTL, TTL), Lookup::Pending);
        }
        while !r.asked.is_empty() {
            wait(&mut poll, &mut r);
        }
        let later = Instant::now() + Duration::from_secs(2);
        let hosts = r.hosts(later, (TTL, Duration::from_secs(1)));
        assert_eq!(hosts.len(), 2, "{hosts:?}");
        let (name, ttl, addrs) = &hosts[0];
        assert_eq!(name, "localhost");
        assert!(
            *ttl + 2 <= TTL.as_secs() && *ttl + 3 >= TTL.as_secs(),
            "{ttl}"
        );
        assert!(
            addrs.ends_with(":5432") || addrs.ends_with(":6432"),
            "{addrs}"
        );
        // A failed lookup lists no address, and a ttl past due reads 0.
        assert_eq!(hosts[1], ("nowhere".to_string(), 0, String::new()));
    }

    #[test]
    fn failures_are_cached_for_the_nxdomain_ttl() {
        let (mut poll, mut r) = resolver();
        let now = Instant::now();
        let host = "no-such-host.example";
        assert_eq!(r.lookup(host, 1, now, TTL, TTL), Lookup::Pending);
        wait(&mut poll, &mut r);
        assert!(matches!(
            r.lookup(host, 1, Instant::now(), TTL, TTL),
            Lookup::Failed(_)
        ));
        assert!(r.asked.is_empty());
        // Once the failure is old, the name is asked again.
        let later = Instant::now() + TTL;
        assert_eq!(r.lookup(host, 1, later, TTL, TTL), Lookup::Pending);
    }
}
