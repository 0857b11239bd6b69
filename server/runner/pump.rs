//! Moving a child's stdout or stderr to the consumer: one reader per pipe,
//! chunks into the exec's event queue, backpressure by not reading. Bulk
//! streams switch to large pipes and large reads (`BulkPipes`).

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::types::Event;
use crate::limits::OutputBudget;

/// Bytes asked of a pipe per read at first; one chunk on the wire. 64 KiB is
/// the default pipe capacity, so one read empties a full pipe.
const CHUNK_SIZE: usize = 64 * 1024;
/// Once a read fills a whole chunk the child writes faster than we read: the
/// pipe grows to this (`F_SETPIPE_SZ`) and reads become this large, so a bulk
/// stream costs one wake-up, one read and one frame per MiB instead of per
/// 64 KiB. Interactive output never fills a chunk and stays as it was.
/// (BENCHMARKS.md, "Levers measured".)
const BULK_CHUNK_SIZE: usize = 1024 * 1024;
/// A read buffer with less room left than this is replaced by a fresh one.
/// Small reads share one buffer until then, so a consumer that holds chunks
/// (a legacy answer) holds about what was read, not a buffer per read.
const MIN_READ_ROOM: usize = 4 * 1024;
/// After the exec's processes have been killed, one that escaped may still
/// hold a pipe: read at most this much more.
const DRAIN_AFTER_STOP: u64 = 1024 * 1024;

/// Where output is read from: a pipe, which may grow, or a pty master.
pub trait Source: AsyncRead + Send + Unpin {
    /// Enlarges the pipe to `size` bytes; false if it cannot.
    fn grow(&self, _size: usize) -> bool {
        false
    }
}

fn grow_pipe(pipe: impl AsFd, size: usize) -> bool {
    let Ok(size) = i32::try_from(size) else {
        return false;
    };
    // Fails (EPERM) past the user's pipe-user-pages-hard; the pipe stays as it was.
    nix::fcntl::fcntl(pipe, nix::fcntl::FcntlArg::F_SETPIPE_SZ(size)).is_ok()
}

impl Source for tokio::process::ChildStdout {
    fn grow(&self, size: usize) -> bool {
        grow_pipe(self, size)
    }
}

impl Source for tokio::process::ChildStderr {
    fn grow(&self, size: usize) -> bool {
        grow_pipe(self, size)
    }
}

impl Source for pty_process::OwnedReadPty {}

/// A child's stdout or stderr on its way to the consumer.
pub struct OutputPipe {
    pub source: Box<dyn Source>,
    /// `ExecSpec::holds_output`.
    pub held: bool,
}

impl OutputPipe {
    pub fn new(source: impl Source + 'static) -> Self {
        OutputPipe {
            source: Box::new(source),
            held: false,
        }
    }
}

/// How many pipes may be enlarged to `BULK_CHUNK_SIZE` at once, owned by the
/// runner. The kernel charges pipe capacity to the user, and past
/// `pipe-user-pages-soft` (64 MiB) every new pipe of an unprivileged user is
/// cut to 8 KiB; the default of 16 stays well below it.
pub struct BulkPipes {
    in_use: AtomicUsize,
    max: usize,
}

impl BulkPipes {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(BulkPipes {
            in_use: AtomicUsize::new(0),
            max,
        })
    }

    fn take(self: &Arc<Self>) -> Option<BulkSlot> {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| BulkSlot(Arc::clone(self)))
    }
}

/// One of the runner's bulk pipes, given back when the pipe's reader ends.
struct BulkSlot(Arc<BulkPipes>);

impl Drop for BulkSlot {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Forwards one pipe as chunks until EOF; a full channel stops reading, so the
/// child's pipe fills and the child waits (backpressure). Returns the bytes sent.
pub async fn pump(
    pipe: Option<OutputPipe>,
    tx: mpsc::Sender<Event>,
    wrap: fn(Bytes) -> Event,
    stop: CancellationToken,
    budget: Arc<OutputBudget>,
    bulk_pipes: Arc<BulkPipes>,
) -> u64 {
    let Some(mut pipe) = pipe else { return 0 };
    let mut read_size = CHUNK_SIZE;
    // Held while the pipe is enlarged; given back when this ends.
    let mut bulk: Option<Option<BulkSlot>> = None;
    let mut buf = BytesMut::with_capacity(read_size);
    let mut total = 0u64;
    let mut after_stop = 0u64;
    loop {
        // `buf` is empty here: each read is split off, and the next one goes
        // into the room left behind it.
        if buf.capacity() < MIN_READ_ROOM {
            buf.reserve(read_size);
            if pipe.held && read_size > CHUNK_SIZE {
                prefault(buf.spare_capacity_mut());
            }
        }
        // Data already in the pipe wins over `stop`, so nothing written before
        // the exec was killed is lost.
        let read = tokio::select! {
            biased;
            read = pipe.source.read_buf(&mut buf) => read,
            () = stop.cancelled() => break,
        };
        match read {
            Ok(0) => break,
            Ok(n) => {
                if stop.is_cancelled() {
                    after_stop += n as u64;
                }
                if n >= CHUNK_SIZE && bulk.is_none() {
                    let slot = bulk_pipes
                        .take()
                        .filter(|_| pipe.source.grow(BULK_CHUNK_SIZE));
                    if slot.is_some() {
                        read_size = BULK_CHUNK_SIZE;
                    }
                    bulk = Some(slot);
                }
                // Past --max-output the pipe is still drained (the exec is
                // being killed) but nothing more is sent or counted.
                let mut chunk = buf.split().freeze();
                chunk.truncate(budget.take(n));
                total += chunk.len() as u64;
                if (!chunk.is_empty() && tx.send(wrap(chunk)).await.is_err())
                    || after_stop > DRAIN_AFTER_STOP
                {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // A pty master reads EIO once every slave fd is closed: its EOF.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => {
                tracing::warn!("reading child output failed: {e}");
                break;
            }
        }
    }
    total
}

/// Maps in the pages of a fresh read buffer with one call. Otherwise the
/// kernel takes a page fault per 4 KiB while copying out of the pipe, with
/// the pipe's lock held, and the writing child spins on that lock (in a
/// profile of a legacy 1 GiB answer, a fifth of all CPU went to that spin).
/// Pages already mapped are left as they are; a kernel older than 5.14
/// refuses the advice and the faults happen as before.
fn prefault(spare: &mut [std::mem::MaybeUninit<u8>]) {
    const PAGE: usize = 4096;
    let start = (spare.as_mut_ptr() as usize).next_multiple_of(PAGE);
    let end = (spare.as_mut_ptr() as usize + spare.len()) & !(PAGE - 1);
    if let Some(addr) = std::ptr::NonNull::new(start as *mut std::ffi::c_void)
        && end > start
    {
        // SAFETY: [start, end) lies inside `spare`, memory this buffer owns;
        // MADV_POPULATE_WRITE maps it writable without changing its contents.
        let _ = unsafe {
            nix::sys::mman::madvise(
                addr,
                end - start,
                nix::sys::mman::MmapAdvise::MADV_POPULATE_WRITE,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_pipes_are_capped_and_given_back() {
        let pipes = BulkPipes::new(2);
        let a = pipes.take().expect("first");
        let _b = pipes.take().expect("second");
        assert!(pipes.take().is_none(), "a third is over the cap");
        drop(a);
        assert!(pipes.take().is_some(), "a slot given back is free again");
    }
}
