//! Loading the UDP socket iterator (svc-ebpf `sockreap.rs`), which needs the
//! `bpf_sock_destroy` kfunc (Linux 6.5).
//!
//! aya 0.14 cannot relocate a `__ksym` extern (kfunc calls arrived in later aya), so the
//! program calls the kfunc through a placeholder helper call, `call SOCK_DESTROY_MARK`, and
//! [`patch`] rewrites that one instruction in a copy of the object before aya parses it:
//! `src_reg = BPF_PSEUDO_KFUNC_CALL` and `imm` = the kfunc's id in the running kernel's BTF
//! (`off` 0: vmlinux, not a module), which is what libbpf writes for a kfunc call and what the
//! verifier resolves (`add_kfunc_call`, kernel/bpf/verifier.c). On a kernel without the kfunc
//! nothing is patched and the program is not loaded: the agent then runs without socket
//! destruction and keeps pods' UDP `connect()` on the per-packet path.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aya::{
    programs::{links::FdLink, Iter},
    Btf, Ebpf,
};
use object::{Object, ObjectSection};
use svc_common::{SOCK_DESTROY_MARK, SOCK_REAP_PROGRAM, SOCK_REAP_SECTION};

/// Pin of the iterator's link under `--bpffs` (a name without a dot, as bpffs wants). The
/// reaper thread opens it in each network namespace to create an iterator there.
pub const SOCK_REAP_PIN: &str = "svc_sock_reap_udp_link";

/// The kfunc the iterator calls.
const SOCK_DESTROY_KFUNC: &str = "bpf_sock_destroy";
/// `BPF_JMP | BPF_CALL`.
const CALL_OPCODE: u8 = 0x85;
/// `BPF_PSEUDO_KFUNC_CALL` (include/uapi/linux/bpf.h), in `src_reg` (the high nibble of the
/// register byte).
const PSEUDO_KFUNC_CALL: u8 = 2;

/// The object with its placeholder call patched into a call of `bpf_sock_destroy`, in 8-byte
/// aligned storage (the ELF parser reads headers in place). `Ok(None)`: the kernel has no such
/// kfunc.
pub fn patch(object: &[u8], btf: &Btf) -> Result<Option<Vec<u64>>> {
    let Ok(kfunc) = btf.id_by_type_name_kind(SOCK_DESTROY_KFUNC, aya_obj::btf::BtfKind::Func)
    else {
        return Ok(None);
    };
    let mut words = vec![0u64; object.len().div_ceil(8)];
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
    bytes[..object.len()].copy_from_slice(object);
    let range = {
        let elf = object::File::parse(&bytes[..object.len()]).context("parsing the eBPF object")?;
        let section = elf
            .section_by_name(SOCK_REAP_SECTION)
            .with_context(|| format!("the eBPF object has no {SOCK_REAP_SECTION} section"))?;
        let (offset, size) = section
            .file_range()
            .with_context(|| format!("{SOCK_REAP_SECTION} has no data"))?;
        offset as usize..(offset + size) as usize
    };
    let patched = patch_calls(&mut bytes[range], kfunc);
    if patched != 1 {
        bail!(
            "{SOCK_REAP_SECTION} has {patched} placeholder calls of {SOCK_DESTROY_KFUNC}, \
             expected exactly one"
        );
    }
    Ok(Some(words))
}

/// Rewrites every `call SOCK_DESTROY_MARK` in `code` (8-byte instructions) into a call of the
/// kfunc `btf_id`; returns how many.
fn patch_calls(code: &mut [u8], btf_id: u32) -> usize {
    let mark = SOCK_DESTROY_MARK.to_le_bytes();
    let mut n = 0;
    for insn in code.chunks_exact_mut(8) {
        // code, regs (dst low nibble, src high), off (2 bytes), imm (4 bytes, little endian).
        if insn[0] == CALL_OPCODE && insn[1] == 0 && insn[2..4] == [0, 0] && insn[4..8] == mark {
            insn[1] = PSEUDO_KFUNC_CALL << 4;
            insn[4..8].copy_from_slice(&btf_id.to_le_bytes());
            n += 1;
        }
    }
    n
}

/// Loads the (patched) iterator, attaches it and pins its link at `bpffs`/[`SOCK_REAP_PIN`],
/// replacing an earlier agent's. Returns the pin.
pub fn load(ebpf: &mut Ebpf, btf: &Btf, bpffs: &Path) -> Result<PathBuf> {
    let prog: &mut Iter = ebpf
        .program_mut(SOCK_REAP_PROGRAM)
        .with_context(|| format!("program {SOCK_REAP_PROGRAM} missing from the object"))?
        .try_into()?;
    prog.load("udp", btf)
        .with_context(|| format!("verifying and loading {SOCK_REAP_PROGRAM}"))?;
    let id = prog.attach().context("creating the iterator link")?;
    let link =
        FdLink::try_from(prog.take_link(id)?).context("the iterator link is not a bpf_link")?;
    let pin = bpffs.join(SOCK_REAP_PIN);
    let _ = std::fs::remove_file(&pin);
    link.pin(&pin)
        .with_context(|| format!("pinning the iterator link at {}", pin.display()))?;
    Ok(pin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u8, regs: u8, off: i16, imm: i32) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = code;
        b[1] = regs;
        b[2..4].copy_from_slice(&off.to_le_bytes());
        b[4..8].copy_from_slice(&imm.to_le_bytes());
        b
    }

    #[test]
    fn only_the_placeholder_call_is_rewritten() {
        let program = [
            insn(0xbf, 0x61, 0, 0),                     // r1 = r6
            insn(CALL_OPCODE, 0, 0, 46),                // call bpf_get_socket_cookie
            insn(CALL_OPCODE, 0, 0, SOCK_DESTROY_MARK), // the placeholder
            insn(CALL_OPCODE, 0x10, 0, 3),              // a BPF-to-BPF call (src_reg 1)
            insn(0xb7, 0, 0, SOCK_DESTROY_MARK),        // r0 = mark: not a call
            insn(0x95, 0, 0, 0),                        // exit
        ];
        let mut code: Vec<u8> = program.concat();
        assert_eq!(patch_calls(&mut code, 123_456), 1);
        let mut want: Vec<u8> = program.concat();
        want[16..24].copy_from_slice(&insn(CALL_OPCODE, 0x20, 0, 123_456));
        assert_eq!(code, want);
        // Patched already: nothing left to patch.
        assert_eq!(patch_calls(&mut code, 1), 0);
    }
}
