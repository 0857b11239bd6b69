//! A legacy connection's reading half, charged to the memory budget: a byte
//! is reserved before it is read, so framed stdin (up to 64 MiB a request)
//! grows only as it arrives and only while the budget allows; a read the
//! budget cannot cover fails with `memory::Exhausted` inside the io error.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;

use crate::memory::{Exhausted, MemoryBudget, Reservation};

pub struct BudgetedReader {
    inner: OwnedReadHalf,
    /// Bytes read and not yet handed on with a decoded request.
    buffered: Reservation,
    /// Bytes read in all: progress, which the idle timeout watches.
    total_read: u64,
}

impl BudgetedReader {
    pub fn new(inner: OwnedReadHalf, memory: &MemoryBudget) -> Self {
        BudgetedReader {
            inner,
            buffered: memory.none(),
            total_read: 0,
        }
    }

    pub async fn readable(&self) -> io::Result<()> {
        self.inner.readable().await
    }

    pub fn total_read(&self) -> u64 {
        self.total_read
    }

    /// A request was decoded: its stdin's bytes move to the returned
    /// reservation (held until its exec ends); of the rest, only what is
    /// still buffered (the start of a next request) stays reserved.
    pub fn settle(&mut self, stdin_len: usize, still_buffered: usize) -> Reservation {
        let stdin = self.buffered.split_off(stdin_len);
        self.buffered.shrink_to(still_buffered);
        stdin
    }
}

/// The budget refusal inside an io error from this reader, if that is what it is.
pub fn exhausted(error: &io::Error) -> Option<&Exhausted> {
    error.get_ref()?.downcast_ref::<Exhausted>()
}

impl AsyncRead for BudgetedReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let room = buf.remaining();
        if room == 0 {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let granted = match this.buffered.grow_up_to(room) {
            Ok(granted) => granted,
            Err(exhausted) => return Poll::Ready(Err(io::Error::other(exhausted))),
        };
        let before = this.buffered.bytes() - granted;
        let read = if granted == room {
            let filled = buf.filled().len();
            let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
            polled.map_ok(|()| buf.filled().len() - filled)
        } else {
            // Only part fits the budget: read that much, and copy it over.
            let mut part = vec![0u8; granted];
            let mut part_buf = ReadBuf::new(&mut part);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut part_buf);
            polled.map_ok(|()| {
                buf.put_slice(part_buf.filled());
                part_buf.filled().len()
            })
        };
        let read_now = match &read {
            Poll::Ready(Ok(n)) => *n,
            _ => 0,
        };
        this.buffered.shrink_to(before + read_now);
        this.total_read += read_now as u64;
        read.map_ok(|_| ())
    }
}
