//! holders: the small BPF assembler the iterators ([`super::fditer`],
//! [`super::taskenv`]) are written with: instruction encodings, helper
//! numbers, and jumps to labels.
//!
//! One rule every program here keeps: a kernel pointer read out of a
//! struct (`task->nsproxy`, `file->f_inode`, ...) is read as a number with
//! `bpf_probe_read_kernel` ([`read_kernel`]), not loaded and walked. For
//! each walked pointer the verifier asks whether its type is trusted by
//! searching the kernel's whole BTF by name, up to four times (about
//! 0.2 ms a search here): two walked pointers made a 21-instruction
//! program cost ~1.5 ms to load, more than the walk it does.

use crate::sys::BpfInsn as Insn;

pub(super) const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

pub(super) const LDX_DW: u8 = 0x79; // BPF_LDX | BPF_MEM | BPF_DW
pub(super) const LDX_W: u8 = 0x61;
pub(super) const STX_DW: u8 = 0x7b;
pub(super) const STX_W: u8 = 0x63;
pub(super) const ST_W: u8 = 0x62; // BPF_ST | BPF_MEM | BPF_W
pub(super) const MOV64_X: u8 = 0xbf;
pub(super) const MOV64_K: u8 = 0xb7;
pub(super) const ADD64_K: u8 = 0x07;
pub(super) const SUB64_X: u8 = 0x1f;
pub(super) const AND64_K: u8 = 0x57;
pub(super) const JEQ_K: u8 = 0x15;
pub(super) const JNE_K: u8 = 0x55;
pub(super) const JNE_X: u8 = 0x5d;
pub(super) const JGT_K: u8 = 0x25;
pub(super) const CALL: u8 = 0x85;
pub(super) const EXIT: u8 = 0x95;
pub(super) const LD_IMM64: u8 = 0x18;
pub(super) const PSEUDO_MAP_FD: u8 = 1;
/// The frame pointer register.
pub(super) const FP: u8 = 10;

// Helper numbers (enum bpf_func_id).
pub(super) const MAP_LOOKUP_ELEM: i32 = 1;
pub(super) const PROBE_READ_KERNEL: i32 = 113;
pub(super) const SEQ_WRITE: i32 = 127;
pub(super) const SOCK_FROM_FILE: i32 = 162;
pub(super) const COPY_FROM_USER_TASK: i32 = 191;

/// Instructions with jumps to labels, resolved by [`Asm::done`].
#[derive(Default)]
pub(super) struct Asm {
    p: Vec<Insn>,
    /// (instruction index, label) of each jump.
    jumps: Vec<(usize, usize)>,
    /// Instruction index of each label.
    labels: Vec<Option<usize>>,
}

impl Asm {
    pub(super) fn op(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.p.push(insn(code, dst, src, off, imm));
    }
    /// A new label, placed later with [`Asm::here`].
    pub(super) fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    /// A conditional jump to `to`.
    pub(super) fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: usize) {
        self.jumps.push((self.p.len(), to));
        self.op(code, dst, src, 0, imm);
    }
    pub(super) fn here(&mut self, label: usize) {
        self.labels[label] = Some(self.p.len());
    }
    /// `r1 = &map` (the two-instruction 64-bit load of a map fd).
    pub(super) fn map(&mut self, map_fd: i32) {
        self.op(LD_IMM64, 1, PSEUDO_MAP_FD, 0, map_fd);
        self.op(0, 0, 0, 0, 0);
    }
    /// `bpf_seq_write(ctx->meta->seq, fp + at, len)`; r6 must be the
    /// iterator's ctx (meta at offset 0).
    pub(super) fn seq_write(&mut self, at: i16, len: i32) {
        self.op(LDX_DW, 1, 6, 0, 0); // r1 = ctx->meta
        self.op(LDX_DW, 1, 1, 0, 0); // r1 = meta->seq
        self.op(MOV64_X, 2, FP, 0, 0);
        self.op(ADD64_K, 2, 0, 0, at as i32);
        self.op(MOV64_K, 3, 0, 0, len);
        self.op(CALL, 0, 0, 0, SEQ_WRITE);
    }
    pub(super) fn done(mut self) -> Vec<Insn> {
        for &(at, to) in &self.jumps {
            let target = self.labels[to].expect("every label is placed");
            self.p[at].off = (target as i64 - at as i64 - 1) as i16;
        }
        self.p
    }
}

/// bpf_probe_read_kernel(fp + `to`, `size`, r`base` + `off`).
pub(super) fn read_kernel(a: &mut Asm, base: u8, off: i16, size: i32, to: i16) {
    a.op(MOV64_X, 3, base, 0, 0);
    read_kernel_at(a, off, size, to);
}

/// bpf_probe_read_kernel(fp + `to`, `size`, r3 + `off`).
pub(super) fn read_kernel_at(a: &mut Asm, off: i16, size: i32, to: i16) {
    a.op(ADD64_K, 3, 0, 0, off as i32);
    a.op(MOV64_X, 1, FP, 0, 0);
    a.op(ADD64_K, 1, 0, 0, to as i32);
    a.op(MOV64_K, 2, 0, 0, size);
    a.op(CALL, 0, 0, 0, PROBE_READ_KERNEL);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_on_their_labels() {
        let mut a = Asm::default();
        let (out, mid) = (a.label(), a.label());
        a.jump(JEQ_K, 1, 0, 0, out); // 0
        a.jump(JNE_X, 1, 2, 0, mid); // 1
        a.op(MOV64_K, 0, 0, 0, 1); // 2
        a.here(mid);
        a.op(MOV64_K, 0, 0, 0, 2); // 3
        a.here(out);
        a.op(EXIT, 0, 0, 0, 0); // 4
        let p = a.done();
        assert_eq!(p[0].off, 3);
        assert_eq!(p[1].off, 1);
    }
}
