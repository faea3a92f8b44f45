//! `BPF_MAP_LOOKUP_BATCH` and `BPF_MAP_DELETE_BATCH` on a map fd. aya 0.14 has no batch API,
//! and walking a hash map with `BPF_MAP_GET_NEXT_KEY` + `BPF_MAP_LOOKUP_ELEM` costs two syscalls
//! per entry (and restarts from the first bucket when the current key is evicted under it);
//! one batch call copies thousands of entries.
use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd},
};

use aya::Pod;

/// `enum bpf_cmd` values (linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// The kernel's internal `ENOTSUPP` (not `EOPNOTSUPP`), what `BPF_DO_BATCH` returns for a map
/// type without the operation.
const ENOTSUPP: i32 = 524;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix for the batch commands; the pointers in it
    // refer to buffers the caller keeps alive and sized for `count` elements.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Entries copied per `BPF_MAP_LOOKUP_BATCH` call. A hash map's batch never splits a bucket,
/// so a chunk must hold the longest bucket; [`lookup_batch`] doubles it on `ENOSPC`.
pub const CHUNK: usize = 8_192;

/// Reads every entry of the hash (or LRU hash) map `fd`, handing them to `each` a chunk at a
/// time (keys and values index alike). Entries added or removed during the walk may or may
/// not be seen; none is seen twice. Returns how many entries were read.
pub fn lookup_batch<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    each: &mut dyn FnMut(&[K], &[V]),
) -> io::Result<usize> {
    let mut chunk = CHUNK;
    // SAFETY: `Pod` types are plain data for which every bit pattern (zero included) is valid.
    let (mut keys, mut values): (Vec<K>, Vec<V>) = unsafe {
        (
            vec![std::mem::zeroed(); chunk],
            vec![std::mem::zeroed(); chunk],
        )
    };
    // The hash map's batch token is a u32 bucket index; u64 leaves room for any map type.
    let mut token_in: u64 = 0;
    let mut token_out: u64 = 0;
    let mut first = true;
    let mut total = 0;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token_in as *const u64 as u64
            },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = (attr.count as usize).min(chunk);
        match result {
            Ok(()) => {}
            // The end of the map; the last entries came with it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                each(&keys[..n], &values[..n]);
                return Ok(total + n);
            }
            // One bucket holds more than a chunk: retry it with room for it.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && n == 0 => {
                chunk *= 2;
                // SAFETY: as above.
                unsafe {
                    keys.resize(chunk, std::mem::zeroed());
                    values.resize(chunk, std::mem::zeroed());
                }
                continue;
            }
            Err(e) => return Err(e),
        }
        each(&keys[..n], &values[..n]);
        total += n;
        token_in = token_out;
        first = false;
    }
}

/// Deletes `keys` from the map `fd`. Keys already gone (evicted by the LRU, or deleted by the
/// datapath) are skipped, not errors. Returns how many were deleted.
pub fn delete_batch<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<usize> {
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len().min(u32::MAX as usize) as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let result = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        // The kernel deletes in order and stops at the first failure; `count` says how far
        // it got.
        let done = (attr.count as usize).min(rest.len());
        match result {
            Ok(()) => return Ok(deleted + done),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && done < rest.len() => {
                deleted += done;
                rest = &rest[done + 1..];
            }
            // A kernel without batch deletion for this map type: one key at a time.
            Err(e)
                if done == 0 && matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(ENOTSUPP)) =>
            {
                return Ok(deleted + delete_each(fd, rest)?);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

fn delete_each<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<usize> {
    /// `BPF_MAP_DELETE_ELEM`'s part of `bpf_attr`.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
    let mut deleted = 0;
    for key in keys {
        let mut attr = ElemAttr {
            map_fd: fd.as_raw_fd() as u32,
            _pad: 0,
            key: key as *const K as u64,
            value: 0,
            flags: 0,
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_MAP_DELETE_ELEM; `key` outlives
        // the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_DELETE_ELEM,
                &mut attr as *mut ElemAttr,
                size_of::<ElemAttr>() as libc::c_uint,
            )
        };
        if rc == 0 {
            deleted += 1;
        } else {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                return Err(e);
            }
        }
    }
    Ok(deleted)
}

/// Creates an unpinned `BPF_MAP_TYPE_LRU_HASH` map (aya 0.14 creates standalone plain hash
/// maps only): for tests and benchmarks that need a conntrack-shaped map without loading the
/// programs.
pub fn create_lru_hash(
    name: &str,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    /// The `BPF_MAP_CREATE` part of `bpf_attr`, up to `map_extra`.
    #[repr(C)]
    #[derive(Default)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
        map_ifindex: u32,
        btf_fd: u32,
        btf_key_type_id: u32,
        btf_value_type_id: u32,
        btf_vmlinux_value_type_id: u32,
        map_extra: u64,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
    let mut attr = CreateAttr {
        map_type: BPF_MAP_TYPE_LRU_HASH,
        key_size,
        value_size,
        max_entries,
        ..Default::default()
    };
    for (dst, src) in attr.map_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src;
    }
    // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_MAP_CREATE.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &mut attr as *mut CreateAttr,
            size_of::<CreateAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}
