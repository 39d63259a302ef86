//! holders: what the BPF fd iterator ([`super::fditer`]) needs to know of
//! this kernel, read from its BTF (/sys/kernel/btf/vmlinux): the id of the
//! iterator's attach function and where three fields sit in kernel structs.
//!
//! One pass over the type section, comparing the names of a few kinds
//! only: the kernel's BTF is ~5 MB and ~100k types, and a full parse
//! (aya's takes 13-50 ms here) would cost more than the scan it replaces.
//! The file is mapped, not read, where the kernel allows it (6.16+), so
//! the pages are never copied. Even so that pass was a fifth of a
//! `reaper who`'s CPU, so [`Kernel`] keeps the answers in a small file
//! ([`CACHE`]) named after the running kernel, and parses only on a miss.

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
    /// unions and structs ([`Kernel::field`] caches this).
    #[cfg(test)]
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

/// Where [`Kernel`]'s answers are kept between runs (root only): a tmpfs,
/// so a new kernel starts with none. REAPER_BTF_CACHE=PATH moves it,
/// REAPER_BTF_CACHE=off reads the BTF every time.
pub const CACHE: &str = "/run/reaper/btf.cache";

/// The first line of a cache file; the second names the kernel.
const CACHE_MAGIC: &str = "reaper: answers from this kernel's BTF, v1";

/// What the iterators ask of the running kernel's BTF: a function's id and
/// where a field sits. Parsing the BTF (a pass over ~5 MB, ~1 ms here) was
/// a fifth of a `reaper who`'s CPU, so the answers are kept in [`CACHE`],
/// under a key that names this kernel (release, version, BTF size), and
/// the BTF is parsed only on a miss. Lookups are Err when a miss finds no
/// BTF at all.
pub struct Kernel {
    key: String,
    path: Option<std::path::PathBuf>,
    state: std::sync::Mutex<Answers>,
}

#[derive(Default)]
struct Answers {
    /// "func NAME" -> "ID", "field STRUCT MEMBER" -> "OFFSET SIZE", "-"
    /// for an absent one.
    known: std::collections::BTreeMap<String, String>,
    /// Answers found in the BTF this run (the cache is rewritten).
    new: bool,
    /// Struct ids looked up in the BTF this run.
    structs: std::collections::HashMap<String, Option<u32>>,
}

/// The running kernel's [`Kernel`], read once per process.
pub fn kernel() -> &'static Kernel {
    static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    KERNEL.get_or_init(|| {
        let path = match std::env::var_os("REAPER_BTF_CACHE") {
            Some(v) if v == "off" => None,
            Some(v) => Some(v.into()),
            None => Some(CACHE.into()),
        };
        Kernel::new(kernel_key(), path)
    })
}

/// This kernel's name for the cache: release, version (build number and
/// date) and the size of its BTF.
fn kernel_key() -> String {
    let size = std::fs::metadata(VMLINUX).map(|m| m.len()).unwrap_or(0);
    match nix::sys::utsname::uname() {
        Ok(u) => format!(
            "{} {} {size}",
            u.release().to_string_lossy(),
            u.version().to_string_lossy()
        ),
        Err(_) => String::new(),
    }
}

impl Kernel {
    fn new(key: String, path: Option<std::path::PathBuf>) -> Kernel {
        let mut answers = Answers::default();
        if let Some(p) = &path {
            if !key.is_empty() {
                answers.known = read_cache(p, &key).unwrap_or_default();
            }
        }
        Kernel {
            key,
            path,
            state: std::sync::Mutex::new(answers),
        }
    }

    /// The BTF id of the function `name`.
    pub fn func_id(&self, name: &str) -> Result<Option<u32>, String> {
        self.answer(format!("func {name}"), |btf, _| {
            Ok(btf.func_id(name).map(|id| id.to_string()))
        })
        .map(|a| a.and_then(|v| v.parse().ok()))
    }

    /// Where field `member` of `struct name` is (see [`Btf::field`]).
    pub fn field(&self, name: &str, member: &str) -> Result<Option<Field>, String> {
        self.answer(format!("field {name} {member}"), |btf, structs| {
            let id = *structs
                .entry(name.to_string())
                .or_insert_with(|| btf.struct_id(name));
            Ok(id
                .and_then(|id| btf.member(id, member))
                .map(|f| format!("{} {}", f.offset, f.size)))
        })
        .map(|a| {
            a.and_then(|v| {
                let (o, s) = v.split_once(' ')?;
                Some(Field {
                    offset: o.parse().ok()?,
                    size: s.parse().ok()?,
                })
            })
        })
    }

    /// The cached answer to `question`, else `find`'s from the parsed BTF
    /// (remembered, absent ones too).
    fn answer(
        &self,
        question: String,
        find: impl FnOnce(
            &Btf<'static>,
            &mut std::collections::HashMap<String, Option<u32>>,
        ) -> Result<Option<String>, String>,
    ) -> Result<Option<String>, String> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = st.known.get(&question) {
            return Ok((v != "-").then(|| v.clone()));
        }
        let found = find(parsed()?, &mut st.structs)?;
        st.known
            .insert(question, found.clone().unwrap_or_else(|| "-".into()));
        st.new = true;
        Ok(found)
    }

    /// Writes the cache when this run found answers it did not have (root
    /// only; a failure costs the next run a parse, nothing else).
    pub fn save(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(path) = &self.path else { return };
        if !st.new || self.key.is_empty() || !nix::unistd::geteuid().is_root() {
            return;
        }
        st.new = false;
        let mut text = format!("{CACHE_MAGIC}\n{}\n", self.key);
        for (q, a) in &st.known {
            text.push_str(&format!("{q}={a}\n"));
        }
        if let Err(e) = write_cache(path, &text) {
            tracing::debug!("BTF answers not cached in {}: {e}", path.display());
        }
    }
}

/// The cache file when it holds this kernel's answers now (for `reaper
/// doctor`).
pub fn cache_in_use() -> Option<std::path::PathBuf> {
    let k = kernel();
    let path = k.path.as_ref()?;
    read_cache(path, &k.key).map(|_| path.clone())
}

/// The kernel's BTF, parsed once per process (on a cache miss).
fn parsed() -> Result<&'static Btf<'static>, String> {
    static PARSED: std::sync::OnceLock<Result<Btf<'static>, String>> = std::sync::OnceLock::new();
    PARSED
        .get_or_init(|| {
            let bytes = vmlinux().map_err(|e| format!("no kernel BTF ({VMLINUX}): {e}"))?;
            // Kept for the life of the process: the index points into it.
            let bytes: &'static Bytes = Box::leak(Box::new(bytes));
            Btf::parse(bytes.as_slice()).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The answers in `path` when it is root's, writable by root alone, and
/// made for the kernel named `key`.
fn read_cache(
    path: &std::path::Path,
    key: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::File::open(path).ok()?;
    let trusted = |m: &std::fs::Metadata| m.uid() == 0 && m.mode() & 0o022 == 0;
    if !trusted(&file.metadata().ok()?) || !trusted(&std::fs::metadata(path.parent()?).ok()?) {
        tracing::debug!("{} ignored: not root's alone", path.display());
        return None;
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut &file, &mut text).ok()?;
    let mut lines = text.lines();
    if lines.next()? != CACHE_MAGIC || lines.next()? != key {
        return None;
    }
    Some(
        lines
            .filter_map(|l| l.split_once('='))
            .map(|(q, a)| (q.to_string(), a.to_string()))
            .collect(),
    )
}

/// Writes `text` to `path` whole (a new file renamed over the old one).
/// A file there that is not a cache (REAPER_BTF_CACHE naming the wrong
/// file) is left alone.
fn write_cache(path: &std::path::Path, text: &str) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Ok(old) = std::fs::File::open(path) {
        let mut head = [0u8; CACHE_MAGIC.len()];
        if std::io::Read::read_exact(&mut &old, &mut head).is_err()
            || head != CACHE_MAGIC.as_bytes()
        {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not reaper's BTF cache is there; not replaced",
            ));
        }
    }
    let dir = path.parent().ok_or(io::ErrorKind::InvalidInput)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    let tmp = dir.join(format!(".btf.cache.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
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

    /// Answers from the cache are the BTF's own: a cold lookup writes the
    /// cache, a warm one reads it without parsing, and both agree with a
    /// direct parse; a cache for another kernel is not used.
    #[test]
    fn cached_answers_are_the_btfs() {
        let Ok(bytes) = vmlinux() else {
            eprintln!("no {VMLINUX}: this kernel has no BTF; nothing to check");
            return;
        };
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: the BTF cache is written by root only");
            return;
        }
        let btf = Btf::parse(bytes.as_slice()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("btf.cache");
        let ask = |k: &Kernel| {
            (
                k.func_id("bpf_iter_task_file").unwrap(),
                k.field("task_struct", "tgid").unwrap(),
                k.field("task_struct", "no_such_field").unwrap(),
            )
        };
        let direct = (
            btf.func_id("bpf_iter_task_file"),
            btf.field("task_struct", "tgid"),
            None,
        );
        let cold = Kernel::new("k1".into(), Some(path.clone()));
        assert_eq!(ask(&cold), direct);
        cold.save();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("field task_struct no_such_field=-"), "{text}");
        let warm = Kernel::new("k1".into(), Some(path.clone()));
        assert_eq!(warm.state.lock().unwrap().known.len(), 3);
        assert_eq!(ask(&warm), direct);
        assert!(!warm.state.lock().unwrap().new, "a warm run parsed the BTF");
        // A file that is not a cache is never replaced.
        let other = dir.path().join("notes");
        std::fs::write(&other, "not a cache\n").unwrap();
        let k = Kernel::new("k1".into(), Some(other.clone()));
        ask(&k);
        k.save();
        assert_eq!(std::fs::read_to_string(&other).unwrap(), "not a cache\n");
        // Another kernel's answers, or a tampered file, are not believed.
        std::fs::write(&path, text.replace("\nk1\n", "\nk2\n")).unwrap();
        assert!(Kernel::new("k1".into(), Some(path.clone()))
            .state
            .lock()
            .unwrap()
            .known
            .is_empty());
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
