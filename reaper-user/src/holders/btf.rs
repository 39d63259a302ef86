//! holders: what the BPF fd iterator ([`super::fditer`]) needs to know of
//! this kernel, read from its BTF (/sys/kernel/btf/vmlinux): the id of the
//! iterator's attach function and where three fields sit in kernel structs.
//!
//! One pass over the type section, comparing the names of a few kinds
//! only: the kernel's BTF is ~5 MB and ~100k types, and a full parse
//! (aya's takes 13-50 ms here) would cost more than the scan it replaces.
//! The file is mapped, not read, where the kernel allows it (6.16+), so
//! the pages are never copied.

use std::io;

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// A field of a kernel struct: where it is and how wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Byte offset in the struct.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

/// The kernel's BTF: a view of its bytes with an index of type offsets.
pub struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Byte offset in `types` of type id i + 1.
    index: Vec<u32>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Btf<'a> {
    /// Parses the header and indexes every type (little-endian BTF only).
    pub fn parse(data: &'a [u8]) -> io::Result<Btf<'a>> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("BTF: {what}"));
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(bad("no BTF header (or not little-endian)"));
        }
        let hdr = u32_at(data, 4).unwrap_or(0) as usize;
        let field = |at| u32_at(data, at).map(|v| v as usize).unwrap_or(usize::MAX);
        let (type_off, type_len, str_off, str_len) = (field(8), field(12), field(16), field(20));
        let section = |off: usize, len: usize| {
            let start = hdr.checked_add(off)?;
            data.get(start..start.checked_add(len)?)
        };
        let types = section(type_off, type_len).ok_or_else(|| bad("type section out of bounds"))?;
        let strings =
            section(str_off, str_len).ok_or_else(|| bad("string section out of bounds"))?;
        let mut index = Vec::with_capacity(types.len() / 24);
        let mut at = 0usize;
        while at + 12 <= types.len() {
            index.push(at as u32);
            let info = u32_at(types, at + 4).unwrap_or(0);
            at += 12 + extra_len(kind(info), vlen(info));
        }
        if at != types.len() {
            return Err(bad("a type runs past the type section"));
        }
        Ok(Btf {
            types,
            strings,
            index,
        })
    }

    fn record(&self, id: u32) -> Option<(u32, u32, u32, usize)> {
        let at = *self.index.get(id.checked_sub(1)? as usize)? as usize;
        let name = u32_at(self.types, at)?;
        let info = u32_at(self.types, at + 4)?;
        let size_or_type = u32_at(self.types, at + 8)?;
        Some((name, info, size_or_type, at + 12))
    }

    fn name_is(&self, name_off: u32, want: &str) -> bool {
        let start = name_off as usize;
        let end = start + want.len();
        self.strings.get(start..end) == Some(want.as_bytes())
            && self.strings.get(end).is_none_or(|&b| b == 0)
    }

    /// The id of the first type of `kind` named `name`.
    fn find(&self, kind_want: u32, name: &str) -> Option<u32> {
        (1..=self.index.len() as u32).find(|&id| {
            self.record(id)
                .is_some_and(|(n, info, _, _)| kind(info) == kind_want && self.name_is(n, name))
        })
    }

    /// The BTF id of the function `name` (what BPF_PROG_LOAD's
    /// attach_btf_id names for an iterator: `bpf_iter_task_file`).
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.find(KIND_FUNC, name)
    }

    /// Where field `member` of `struct name` is, looking into anonymous
    /// unions and structs.
    pub fn field(&self, name: &str, member: &str) -> Option<Field> {
        self.member(self.struct_id(name)?, member)
    }

    /// The id of `struct name` (a lookup is a pass over every type: find
    /// a struct once for all its fields).
    pub fn struct_id(&self, name: &str) -> Option<u32> {
        self.find(KIND_STRUCT, name)
    }

    /// Where field `member` of the struct `id` is (as [`Btf::field`]).
    pub fn member(&self, id: u32, member: &str) -> Option<Field> {
        self.member_in(id, member, 0)
    }

    fn member_in(&self, id: u32, member: &str, base_bits: u32) -> Option<Field> {
        let (_, info, _, members) = self.record(id)?;
        if !matches!(kind(info), KIND_STRUCT | KIND_UNION) {
            return None;
        }
        let bitfields = info >> 31 == 1;
        for i in 0..vlen(info) as usize {
            let at = members + i * 12;
            let (m_name, m_type, m_off) = (
                u32_at(self.types, at)?,
                u32_at(self.types, at + 4)?,
                u32_at(self.types, at + 8)?,
            );
            let bits = base_bits + if bitfields { m_off & 0xff_ffff } else { m_off };
            if m_name == 0 {
                if let Some(f) = self.member_in(self.resolve(m_type)?, member, bits) {
                    return Some(f);
                }
            } else if self.name_is(m_name, member) {
                if !bits.is_multiple_of(8) || (bitfields && m_off >> 24 != 0) {
                    return None; // a bitfield: not something to load
                }
                return Some(Field {
                    offset: bits / 8,
                    size: self.size_of(m_type)?,
                });
            }
        }
        None
    }

    /// Follows typedefs and qualifiers to the type itself.
    fn resolve(&self, mut id: u32) -> Option<u32> {
        for _ in 0..32 {
            let (_, info, next, _) = self.record(id)?;
            match kind(info) {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = next
                }
                _ => return Some(id),
            }
        }
        None
    }

    fn size_of(&self, id: u32) -> Option<u32> {
        let (_, info, size, _) = self.record(self.resolve(id)?)?;
        match kind(info) {
            KIND_PTR => Some(std::mem::size_of::<usize>() as u32),
            KIND_INT | KIND_ENUM | KIND_ENUM64 | KIND_STRUCT | KIND_UNION => Some(size),
            KIND_ARRAY => {
                // struct btf_array: element type, index type, count.
                let (_, _, _, extra) = self.record(self.resolve(id)?)?;
                let elem = u32_at(self.types, extra)?;
                let count = u32_at(self.types, extra + 8)?;
                self.size_of(elem)?.checked_mul(count)
            }
            _ => None,
        }
    }
}

fn kind(info: u32) -> u32 {
    (info >> 24) & 0x1f
}

fn vlen(info: u32) -> u32 {
    info & 0xffff
}

/// Bytes that follow the 12-byte `struct btf_type` for a kind.
fn extra_len(kind: u32, vlen: u32) -> usize {
    let vlen = vlen as usize;
    match kind {
        1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
        3 => 12,                      // ARRAY
        4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
        6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
        _ => 0,                       // PTR, FWD, TYPEDEF, qualifiers, FUNC, FLOAT, TYPE_TAG
    }
}

/// The kernel's BTF bytes: mapped when the kernel allows it, else read.
pub enum Bytes {
    Mapped(crate::sys::Mapping),
    Read(Vec<u8>),
}

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m.as_slice(),
            Bytes::Read(v) => v,
        }
    }
}

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// The running kernel's BTF, mapped and indexed once per process (each
/// iterator looks up its own fields in it). Err says why there is none.
pub fn kernel() -> Result<&'static Btf<'static>, String> {
    static KERNEL: std::sync::OnceLock<Result<Btf<'static>, String>> = std::sync::OnceLock::new();
    KERNEL
        .get_or_init(|| {
            let bytes = vmlinux().map_err(|e| format!("no kernel BTF ({VMLINUX}): {e}"))?;
            // Kept for the life of the process: the index points into it.
            let bytes: &'static Bytes = Box::leak(Box::new(bytes));
            Btf::parse(bytes.as_slice()).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The running kernel's BTF.
pub fn vmlinux() -> io::Result<Bytes> {
    let file = std::fs::File::open(VMLINUX)?;
    let len = file.metadata()?.len() as usize;
    if len > 0 {
        if let Ok(m) = crate::sys::Mapping::of(&file, len) {
            return Ok(Bytes::Mapped(m));
        }
    }
    let mut v = Vec::with_capacity(len);
    std::io::Read::read_to_end(&mut &file, &mut v)?;
    Ok(Bytes::Read(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_kernels_fields() {
        let Ok(bytes) = vmlinux() else {
            eprintln!("no {VMLINUX}: this kernel has no BTF; nothing to check");
            return;
        };
        let btf = Btf::parse(bytes.as_slice()).unwrap();
        // Kernels since 5.8 have the task_file iterator.
        assert!(btf.func_id("bpf_iter_task_file").is_some());
        let tgid = btf.field("task_struct", "tgid").unwrap();
        assert_eq!(tgid.size, 4);
        let ino = btf.field("inode", "i_ino").unwrap();
        assert!(ino.size == 8 || ino.size == 4);
        let f_inode = btf.field("file", "f_inode").unwrap();
        assert_eq!(f_inode.size as usize, std::mem::size_of::<usize>());
        assert_eq!(btf.field("file", "no_such_field"), None);
        assert_eq!(btf.field("no_such_struct", "x"), None);
    }

    #[test]
    fn nasty_bytes_do_not_panic() {
        assert!(Btf::parse(&[]).is_err());
        let mut b = vec![0u8; 24];
        b[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&24u32.to_le_bytes());
        b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Btf::parse(&b).is_err());
        // One STRUCT that claims 1000 members with none there.
        let mut b = vec![0u8; 24];
        b[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&24u32.to_le_bytes());
        b[12..16].copy_from_slice(&12u32.to_le_bytes());
        b[16..20].copy_from_slice(&12u32.to_le_bytes());
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&((KIND_STRUCT << 24) | 1000).to_le_bytes());
        b.extend_from_slice(&8u32.to_le_bytes());
        b.push(0);
        assert!(Btf::parse(&b).is_err());
    }
}
