//! Read and write buffers kept per thread for connections that are reading or writing, so an
//! idle connection (client or upstream) holds none: it takes one when bytes arrive or a request
//! goes out, and gives it back when it goes quiet.

use std::cell::RefCell;

use bytes::BytesMut;

/// Size of a pooled read buffer.
pub const BUF: usize = 8 * 1024;

const KEEP: usize = 256;

thread_local! {
    static READ: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static WRITE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

pub fn read_buf() -> BytesMut {
    READ.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(BUF))
}

/// Takes back a read buffer with nothing left in it (one still holding bytes is dropped).
pub fn put_read(mut b: BytesMut) {
    if !b.is_empty() || b.capacity() == 0 {
        return;
    }
    b.clear();
    // Empty and not shared: takes the whole allocation back in place.
    b.reserve(BUF);
    if b.capacity() > 4 * BUF {
        return;
    }
    READ.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < KEEP {
            p.push(b);
        }
    });
}

pub fn write_buf() -> Vec<u8> {
    WRITE
        .with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(1024))
}

pub fn put_write(mut v: Vec<u8>) {
    if v.capacity() == 0 || v.capacity() > 4 * BUF {
        return;
    }
    v.clear();
    WRITE.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < KEEP {
            p.push(v);
        }
    });
}
