//! Connection buffers, lent from a per-worker free list so idle connections hold none.
//!
//! `InBuf` holds bytes read from a socket: `start <= end <= data.len()`, live bytes are
//! `data[start..end]`. `OutBuf` holds bytes the pooler itself wrote for a peer.

/// Free lists of equal-sized buffers. Buffers that grew past the standard size are
/// dropped instead of kept, so one huge message cannot pin memory for ever.
pub struct BufPool {
    size: usize,
    max_free: usize,
    reads: Vec<Vec<u8>>,
    writes: Vec<Vec<u8>>,
}

impl BufPool {
    pub fn new(size: usize, max_free: usize) -> BufPool {
        BufPool {
            size,
            max_free,
            reads: Vec::new(),
            writes: Vec::new(),
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Read and write buffers kept on the free lists.
    pub fn free(&self) -> (usize, usize) {
        (self.reads.len(), self.writes.len())
    }

    fn get_read(&mut self) -> Vec<u8> {
        self.reads.pop().unwrap_or_else(|| vec![0; self.size])
    }

    fn put_read(&mut self, v: Vec<u8>) {
        if v.len() == self.size && self.reads.len() < self.max_free {
            self.reads.push(v);
        }
    }

    fn get_write(&mut self) -> Vec<u8> {
        self.writes
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.size))
    }

    fn put_write(&mut self, mut v: Vec<u8>) {
        if v.capacity() == self.size && self.writes.len() < self.max_free {
            v.clear();
            self.writes.push(v);
        }
    }
}

/// Bytes read from a socket and not yet consumed.
#[derive(Default)]
pub struct InBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl InBuf {
    pub const fn new() -> InBuf {
        InBuf {
            data: Vec::new(),
            start: 0,
            end: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn has_storage(&self) -> bool {
        !self.data.is_empty()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room to read into, taking storage from `pool` when there is none yet and
    /// moving live bytes to the front when the tail is full.
    pub fn spare(&mut self, pool: &mut BufPool) -> &mut [u8] {
        if self.data.is_empty() {
            self.data = pool.get_read();
        }
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.data[self.end..]
    }

    pub fn commit(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.data.len());
        self.end += n;
    }

    /// Makes sure a message of `total` bytes at the front can fit, growing past the
    /// standard size if it must. The caller bounds `total`.
    pub fn make_room(&mut self, total: usize, pool: &mut BufPool) {
        if self.data.is_empty() {
            self.data = pool.get_read();
        }
        if self.data.len() - self.start < total {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.data.len() < total {
                self.data.resize(total, 0);
            }
        }
    }

    /// Whether a read could add bytes now.
    pub fn can_read(&self) -> bool {
        self.data.is_empty() || self.end < self.data.len() || self.start > 0
    }

    /// Hands the storage back when nothing is buffered.
    #[inline]
    pub fn release(&mut self, pool: &mut BufPool) {
        if self.is_empty() && !self.data.is_empty() {
            pool.put_read(std::mem::take(&mut self.data));
        }
    }

    /// Drops buffered bytes and storage.
    pub fn clear(&mut self, pool: &mut BufPool) {
        self.start = 0;
        self.end = 0;
        self.release(pool);
    }
}

/// Bytes the pooler produced for a peer, waiting to be written.
#[derive(Default)]
pub struct OutBuf {
    data: Vec<u8>,
    sent: usize,
}

impl OutBuf {
    pub const fn new() -> OutBuf {
        OutBuf {
            data: Vec::new(),
            sent: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sent == self.data.len()
    }

    /// Whether it holds a buffer (lent from the pool or grown).
    pub fn has_storage(&self) -> bool {
        self.data.capacity() > 0
    }

    pub fn pending(&self) -> &[u8] {
        &self.data[self.sent..]
    }

    /// The buffer to append messages to.
    pub fn vec(&mut self, pool: &mut BufPool) -> &mut Vec<u8> {
        if self.data.capacity() == 0 {
            self.data = pool.get_write();
        }
        &mut self.data
    }

    pub fn advance(&mut self, n: usize) {
        self.sent += n;
        debug_assert!(self.sent <= self.data.len());
        if self.sent == self.data.len() {
            self.sent = 0;
            self.data.clear();
        }
    }

    /// Hands the storage back when everything was sent.
    #[inline]
    pub fn release(&mut self, pool: &mut BufPool) {
        if self.is_empty() && self.data.capacity() != 0 {
            pool.put_write(std::mem::take(&mut self.data));
        }
    }

    pub fn clear(&mut self, pool: &mut BufPool) {
        self.sent = 0;
        self.data.clear();
        self.release(pool);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_buf_lends_and_returns_storage() {
        let mut pool = BufPool::new(16, 4);
        let mut b = InBuf::new();
        assert!(!b.has_storage());
        let s = b.spare(&mut pool);
        assert_eq!(s.len(), 16);
        s[..3].copy_from_slice(b"abc");
        b.commit(3);
        assert_eq!(b.bytes(), b"abc");
        b.release(&mut pool);
        assert!(b.has_storage(), "kept while bytes are buffered");
        b.consume(3);
        b.release(&mut pool);
        assert!(!b.has_storage());
        assert_eq!(pool.reads.len(), 1);
    }

    #[test]
    fn in_buf_compacts_when_full() {
        let mut pool = BufPool::new(8, 4);
        let mut b = InBuf::new();
        b.spare(&mut pool).copy_from_slice(b"abcdefgh");
        b.commit(8);
        b.consume(5);
        assert!(b.can_read());
        let s = b.spare(&mut pool);
        assert_eq!(s.len(), 5);
        assert_eq!(b.bytes(), b"fgh");
    }

    #[test]
    fn make_room_grows_and_grown_buffers_are_not_pooled() {
        let mut pool = BufPool::new(8, 4);
        let mut b = InBuf::new();
        b.spare(&mut pool)[..4].copy_from_slice(b"wxyz");
        b.commit(4);
        b.consume(2);
        b.make_room(20, &mut pool);
        assert_eq!(b.bytes(), b"yz");
        assert!(b.spare(&mut pool).len() >= 18);
        b.consume(2);
        b.release(&mut pool);
        assert!(pool.reads.is_empty());
    }

    #[test]
    fn out_buf_clears_after_send() {
        let mut pool = BufPool::new(8, 4);
        let mut o = OutBuf::new();
        o.vec(&mut pool).extend_from_slice(b"hello");
        assert_eq!(o.pending(), b"hello");
        o.advance(2);
        assert_eq!(o.pending(), b"llo");
        o.advance(3);
        assert!(o.is_empty());
        o.release(&mut pool);
        assert_eq!(pool.writes.len(), 1);
    }
}
