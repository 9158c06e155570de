//! Aligned buffers for O_DIRECT, allocated once per lane up front.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// Alignment of every buffer: O_DIRECT needs the logical block size (512 or
/// 4096) for memory; a page also suits registered buffers.
pub const BUFFER_ALIGN_BYTES: usize = 4096;

/// A heap buffer aligned to [`BUFFER_ALIGN_BYTES`] whose address never moves,
/// so the kernel may hold a pointer to it while an operation is in flight.
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively (like a Box<[u8]>); moving
// it to another thread moves that ownership.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (rounded up to the alignment). The
    /// memory is an anonymous mapping: page-aligned and zero-filled by the
    /// kernel as it is first touched, with no memset of the whole buffer up
    /// front (what a zeroed heap allocation with this alignment costs).
    /// Aborts if the memory cannot be had, like any allocation; the lanes'
    /// buffers use [`AlignedBuf::try_new`].
    pub fn new(len: usize) -> AlignedBuf {
        AlignedBuf::try_new(len).unwrap_or_else(|_| {
            let len = len.max(1).next_multiple_of(BUFFER_ALIGN_BYTES);
            alloc::handle_alloc_error(Layout::from_size_align(len, BUFFER_ALIGN_BYTES).expect("buffer layout"))
        })
    }

    /// As [`AlignedBuf::new`], but a mapping the kernel refuses (memory
    /// short, or the address-space limit RLIMIT_AS reached) is an error
    /// saying so rather than an abort.
    pub fn try_new(len: usize) -> std::io::Result<AlignedBuf> {
        use rustix::mm::{mmap_anonymous, MapFlags, ProtFlags};
        let len = len.max(1).next_multiple_of(BUFFER_ALIGN_BYTES);
        // SAFETY: a new private anonymous mapping with no address hint
        // aliases no existing memory; we own it until Drop unmaps it.
        let raw =
            unsafe { mmap_anonymous(std::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::PRIVATE) };
        match raw {
            Ok(p) => {
                Ok(AlignedBuf { ptr: NonNull::new(p.cast::<u8>()).expect("mmap never returns null on success"), len })
            }
            Err(e) => Err(std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                format!(
                    "could not map {} MiB for an I/O buffer ({e}): memory is short, or the address-space limit \
                     (RLIMIT_AS, `ulimit -v`) is too low; lower --queue-depth, --lanes or --chunk-size",
                    len.div_ceil(1 << 20)
                ),
            )),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes (zeroed at allocation)
        // for as long as self lives, and &self forbids concurrent mutation.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice, and &mut self makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly the mapping made in new(), unmapped
        // once; nothing borrows it any more (Drop has &mut self), and the
        // I/O backends never drop a buffer while an operation uses it.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_zeroed_and_rounded() {
        let mut b = AlignedBuf::new(5000);
        assert_eq!(b.len(), 8192);
        assert_eq!(b.as_ptr() as usize % BUFFER_ALIGN_BYTES, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[8191] = 3;
        assert_eq!(b.as_slice()[8191], 3);
    }
}
