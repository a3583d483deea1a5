//! A targeted reader of BTF (the kernel's `/sys/kernel/btf/vmlinux`, or a module's split
//! BTF on top of it) that answers only "where is this member of this struct" and "which
//! id has this function", for names given up front.
//!
//! Parsing the whole 5.5 MB of vmlinux BTF into a type table (btf_rs) was the start-up
//! peak of iostall's memory (~25 MiB for a dozen offsets). This reader streams the
//! string section once to learn at which offsets the wanted names sit, streams the type
//! section once to note each record's position (4 bytes a type) and which ids carry a
//! wanted struct or function name, and reads the few records it then needs with
//! positioned reads. What it holds is the position index (~0.6 MiB for vmlinux) and a
//! few small maps.
//!
//! Format: `Documentation/bpf/btf.rst` (header, type records of 12 bytes plus a
//! kind-dependent tail, NUL-terminated strings). Split BTF continues the base's type
//! ids and string offsets.
use std::{
    collections::HashMap,
    fs::File,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Arc,
};

/// `BTF_MAGIC` as read on a little-endian host; the other byte order reads swapped.
const MAGIC: u16 = 0xeb9f;
/// Fixed part of the header: magic, version, flags, hdr_len, then four u32.
const HEADER_LEN: usize = 24;
/// Bytes of `struct btf_type`.
const TYPE_LEN: usize = 12;
/// Bytes streamed per read.
const CHUNK: usize = 64 * 1024;

/// BTF kinds (`BTF_KIND_*`) this reader tells apart.
mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

/// Errors reading BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file could not be opened or read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The read's error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not BTF as this reader knows it.
    #[error("{path} is not valid BTF: {what}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        what: String,
    },
}

/// Bytes that can be read at an offset: a file (sysfs BTF takes positioned reads) or,
/// in tests, a buffer.
trait ReadAt: Send + Sync {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// One BTF blob (vmlinux's, or a module's split on it).
struct Layer {
    path: PathBuf,
    src: Box<dyn ReadAt>,
    /// Absolute file offsets and lengths of the type and string sections.
    types_at: u64,
    types_len: u32,
    strings_at: u64,
    strings_len: u32,
    /// Id of this layer's first type (1 for a base, the base's next id for split BTF).
    first_id: u32,
    /// Offset this layer's strings start at in name offsets (0, or the base's string
    /// section length for split BTF).
    str_base: u32,
    /// Position of each type record in the type section, by `id - first_id`.
    positions: Vec<u32>,
}

impl Layer {
    fn open(path: &Path, src: Box<dyn ReadAt>, base: Option<&Layer>) -> Result<Self, BtfError> {
        let mut header = [0u8; HEADER_LEN];
        read_exact_at(&*src, path, &mut header, 0)?;
        let format = |what: String| BtfError::Format {
            path: path.to_path_buf(),
            what,
        };
        let u32_at =
            |i: usize| u32::from_ne_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let magic = u16::from_ne_bytes([header[0], header[1]]);
        if magic != MAGIC {
            return Err(format(format!(
                "magic {magic:#06x}, expected {MAGIC:#06x} (or BTF of the other byte order)"
            )));
        }
        let hdr_len = u64::from(u32_at(4));
        if hdr_len < HEADER_LEN as u64 {
            return Err(format(format!("header length {hdr_len} < {HEADER_LEN}")));
        }
        let (first_id, str_base) = match base {
            None => (1, 0),
            Some(b) => (
                b.first_id + b.positions.len() as u32,
                b.str_base + b.strings_len,
            ),
        };
        let mut layer = Self {
            path: path.to_path_buf(),
            src,
            types_at: hdr_len + u64::from(u32_at(8)),
            types_len: u32_at(12),
            strings_at: hdr_len + u64::from(u32_at(16)),
            strings_len: u32_at(20),
            first_id,
            str_base,
            positions: Vec::new(),
        };
        let mut positions = Vec::new();
        layer.walk_types(|position, _, _| positions.push(position))?;
        positions.shrink_to_fit();
        layer.positions = positions;
        Ok(layer)
    }

    fn format_error(&self, what: String) -> BtfError {
        BtfError::Format {
            path: self.path.clone(),
            what,
        }
    }

    /// Calls `f(position, info, name_off)` for each type record, in id order.
    fn walk_types(&self, mut f: impl FnMut(u32, u32, u32)) -> Result<(), BtfError> {
        let mut stream = Stream::new(self, self.types_at, self.types_len);
        while stream.remaining() > 0 {
            let position = stream.position();
            let head = stream.take(TYPE_LEN)?;
            let name_off = ne_u32(head, 0);
            let info = ne_u32(head, 4);
            let tail = self.tail_len(info).ok_or_else(|| {
                self.format_error(format!(
                    "unknown kind {} at type section offset {position}",
                    kind_of(info)
                ))
            })?;
            stream.skip(tail)?;
            f(position, info, name_off);
        }
        Ok(())
    }

    /// Bytes after `struct btf_type` for a record with `info`.
    fn tail_len(&self, info: u32) -> Option<usize> {
        let vlen = (info & 0xffff) as usize;
        Some(match kind_of(info) {
            kind::INT | kind::VAR | kind::DECL_TAG => 4,
            kind::ARRAY => 12,
            kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * vlen,
            kind::ENUM | kind::FUNC_PROTO => 8 * vlen,
            kind::PTR
            | kind::FWD
            | kind::TYPEDEF
            | kind::VOLATILE
            | kind::CONST
            | kind::RESTRICT
            | kind::FUNC
            | kind::FLOAT
            | kind::TYPE_TAG => 0,
            _ => return None,
        })
    }

    /// Calls `f(name_offset, string)` for each string of the section (offsets as type
    /// records name them, so split BTF's come after the base's).
    fn walk_strings(&self, mut f: impl FnMut(u32, &[u8])) -> Result<(), BtfError> {
        let mut stream = Stream::new(self, self.strings_at, self.strings_len);
        while stream.remaining() > 0 {
            let position = stream.position();
            let s = stream.take_until_nul()?;
            f(self.str_base + position, s);
        }
        Ok(())
    }

    fn contains(&self, id: u32) -> bool {
        id >= self.first_id && ((id - self.first_id) as usize) < self.positions.len()
    }

    /// The record of type `id`: (info, size-or-type, member or param tail bytes).
    fn record(&self, id: u32) -> Result<Record, BtfError> {
        let position = self.positions[(id - self.first_id) as usize];
        let at = self.types_at + u64::from(position);
        let mut head = [0u8; TYPE_LEN];
        read_exact_at(&*self.src, &self.path, &mut head, at)?;
        let info = ne_u32(&head, 4);
        let kind = kind_of(info);
        let members = if kind == kind::STRUCT || kind == kind::UNION {
            let mut tail = vec![0u8; 12 * (info & 0xffff) as usize];
            read_exact_at(&*self.src, &self.path, &mut tail, at + TYPE_LEN as u64)?;
            tail.chunks_exact(12)
                .map(|m| Member {
                    name_off: ne_u32(m, 0),
                    type_id: ne_u32(m, 4),
                    bit_offset: if info >> 31 == 1 {
                        ne_u32(m, 8) & 0x00ff_ffff
                    } else {
                        ne_u32(m, 8)
                    },
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Record {
            kind,
            size_or_type: ne_u32(&head, 8),
            members,
        })
    }
}

fn kind_of(info: u32) -> u32 {
    (info >> 24) & 0x1f
}

fn ne_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn read_exact_at(src: &dyn ReadAt, path: &Path, buf: &mut [u8], at: u64) -> Result<(), BtfError> {
    let mut done = 0;
    while done < buf.len() {
        let n = src
            .read_at(&mut buf[done..], at + done as u64)
            .map_err(|source| BtfError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        if n == 0 {
            return Err(BtfError::Format {
                path: path.to_path_buf(),
                what: format!("ends at byte {}, inside a section", at + done as u64),
            });
        }
        done += n;
    }
    Ok(())
}

/// Reads a section front to back through a fixed buffer.
struct Stream<'a> {
    layer: &'a Layer,
    at: u64,
    len: u32,
    /// Section bytes consumed before `buf[0]`.
    buf_start: u32,
    buf: Vec<u8>,
    pos: usize,
}

impl<'a> Stream<'a> {
    fn new(layer: &'a Layer, at: u64, len: u32) -> Self {
        Self {
            layer,
            at,
            len,
            buf_start: 0,
            buf: Vec::with_capacity(CHUNK),
            pos: 0,
        }
    }

    fn position(&self) -> u32 {
        self.buf_start + self.pos as u32
    }

    fn remaining(&self) -> u32 {
        self.len - self.position()
    }

    /// Makes at least `n` bytes available at `pos` (fewer only at the section's end).
    fn fill(&mut self, n: usize) -> Result<(), BtfError> {
        if self.buf.len() - self.pos >= n {
            return Ok(());
        }
        self.buf.drain(..self.pos);
        self.buf_start += self.pos as u32;
        self.pos = 0;
        let loaded = self.buf_start as usize + self.buf.len();
        let want = (CHUNK.max(n) - self.buf.len()).min(self.len as usize - loaded);
        let old = self.buf.len();
        self.buf.resize(old + want, 0);
        read_exact_at(
            &*self.layer.src,
            &self.layer.path,
            &mut self.buf[old..],
            self.at + loaded as u64,
        )
    }

    fn take(&mut self, n: usize) -> Result<&[u8], BtfError> {
        self.fill(n)?;
        if self.buf.len() - self.pos < n {
            return Err(self.layer.format_error(format!(
                "a record runs past the end of its section (at offset {})",
                self.position()
            )));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn skip(&mut self, mut n: usize) -> Result<(), BtfError> {
        while n > 0 {
            let step = n.min(CHUNK);
            self.take(step)?;
            n -= step;
        }
        Ok(())
    }

    /// The next NUL-terminated string, without its NUL.
    fn take_until_nul(&mut self) -> Result<&[u8], BtfError> {
        let mut want = 1;
        loop {
            self.fill(want)?;
            let avail = &self.buf[self.pos..];
            if let Some(nul) = avail.iter().position(|&b| b == 0) {
                let start = self.pos;
                self.pos += nul + 1;
                return Ok(&self.buf[start..start + nul]);
            }
            if avail.len() < want || avail.len() >= CHUNK * 4 {
                return Err(self.layer.format_error(format!(
                    "unterminated string at string section offset {}",
                    self.position()
                )));
            }
            want = avail.len() + 1;
        }
    }
}

struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
}

struct Record {
    kind: u32,
    size_or_type: u32,
    members: Vec<Member>,
}

/// What a BTF blob (and its base, for split BTF) says about the names it was opened
/// with: struct member offsets and function ids.
pub struct BtfLookup {
    /// Base first, then the split layer.
    layers: Vec<Arc<Layer>>,
    /// The wanted names, by index.
    names: Vec<String>,
    /// Name offset → index into `names`, for every offset at which a wanted name is a
    /// whole string (a suffix of a longer one included, which BTF may share).
    name_at: HashMap<u32, u16>,
    /// (name index, kind) → the first id with that name: structs with members, and
    /// functions.
    by_name: HashMap<(u16, u32), u32>,
}

impl BtfLookup {
    /// Opens the BTF at `path` for `names` (struct, member and function names).
    pub fn open<'n>(
        path: &Path,
        names: impl IntoIterator<Item = &'n str>,
    ) -> Result<Self, BtfError> {
        let file = File::open(path).map_err(|source| BtfError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let layer = Layer::open(path, Box::new(file), None)?;
        Self::index(vec![Arc::new(layer)], names)
    }

    /// Opens split BTF at `path` (a module's) on top of `base`, for `names`.
    pub fn open_split<'n>(
        path: &Path,
        base: &Self,
        names: impl IntoIterator<Item = &'n str>,
    ) -> Result<Self, BtfError> {
        let file = File::open(path).map_err(|source| BtfError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::split_from(path, Box::new(file), base, names)
    }

    fn split_from<'n>(
        path: &Path,
        src: Box<dyn ReadAt>,
        base: &Self,
        names: impl IntoIterator<Item = &'n str>,
    ) -> Result<Self, BtfError> {
        let top = base.layers.last().map(|l| &**l);
        let layer = Layer::open(path, src, top)?;
        let mut layers = base.layers.clone();
        layers.push(Arc::new(layer));
        Self::index(layers, names)
    }

    fn index<'n>(
        layers: Vec<Arc<Layer>>,
        names: impl IntoIterator<Item = &'n str>,
    ) -> Result<Self, BtfError> {
        let mut wanted: Vec<String> = Vec::new();
        for name in names {
            if !wanted.iter().any(|w| w == name) {
                wanted.push(name.to_owned());
            }
        }
        // "" names anonymous members.
        if !wanted.iter().any(String::is_empty) {
            wanted.push(String::new());
        }
        let mut name_at = HashMap::new();
        for layer in &layers {
            layer.walk_strings(|offset, s| {
                for (i, w) in wanted.iter().enumerate() {
                    let w = w.as_bytes();
                    if (w.is_empty() && s.is_empty()) || (!w.is_empty() && s.ends_with(w)) {
                        name_at.insert(offset + (s.len() - w.len()) as u32, i as u16);
                    }
                }
            })?;
        }
        let mut by_name = HashMap::new();
        for layer in &layers {
            let mut id = layer.first_id;
            layer.walk_types(|_, info, name_off| {
                let k = kind_of(info);
                let named = (k == kind::STRUCT && info & 0xffff != 0) || k == kind::FUNC;
                if named && let Some(&n) = name_at.get(&name_off) {
                    by_name.entry((n, k)).or_insert(id);
                }
                id += 1;
            })?;
        }
        Ok(Self {
            layers,
            names: wanted,
            name_at,
            by_name,
        })
    }

    fn name_index(&self, name: &str) -> Option<u16> {
        self.names.iter().position(|n| n == name).map(|i| i as u16)
    }

    fn record(&self, id: u32) -> Result<Option<Record>, BtfError> {
        match self.layers.iter().find(|l| l.contains(id)) {
            Some(layer) => layer.record(id).map(Some),
            None => Ok(None),
        }
    }

    /// The id of the function `name` (a name given at open), if the BTF has it.
    #[must_use]
    pub fn function_id(&self, name: &str) -> Option<u32> {
        let n = self.name_index(name)?;
        self.by_name.get(&(n, kind::FUNC)).copied()
    }

    /// Whether the BTF has a struct `name` (with members).
    #[must_use]
    pub fn has_struct(&self, name: &str) -> bool {
        self.name_index(name)
            .is_some_and(|n| self.by_name.contains_key(&(n, kind::STRUCT)))
    }

    /// Bit offset of `path` (member names, each inside the previous member's struct or
    /// union, anonymous members looked into) in the first `struct struct_name` with
    /// members; `None` when any name is absent (or was not given at open).
    pub fn member_bit_offset(
        &self,
        struct_name: &str,
        path: &[&str],
    ) -> Result<Option<u32>, BtfError> {
        let Some(n) = self.name_index(struct_name) else {
            return Ok(None);
        };
        let Some(&id) = self.by_name.get(&(n, kind::STRUCT)) else {
            return Ok(None);
        };
        let Some(mut current) = self.record(id)? else {
            return Ok(None);
        };
        let mut bits = 0u32;
        for (i, name) in path.iter().enumerate() {
            let Some(want) = self.name_index(name) else {
                return Ok(None);
            };
            let Some((offset, type_id)) = self.find_member(&current, want, 0)? else {
                return Ok(None);
            };
            bits += offset;
            if i + 1 < path.len() {
                let Some(next) = self.resolve_struct(type_id)? else {
                    return Ok(None);
                };
                current = next;
            }
        }
        Ok(Some(bits))
    }

    /// Finds the member named by name index `want` in `s`, looking inside anonymous
    /// struct/union members too: (bit offset from the start of `s`, member type id).
    fn find_member(
        &self,
        s: &Record,
        want: u16,
        depth: u32,
    ) -> Result<Option<(u32, u32)>, BtfError> {
        let anonymous = self.name_index("");
        for m in &s.members {
            let name = self.name_at.get(&m.name_off).copied();
            if name == Some(want) {
                return Ok(Some((m.bit_offset, m.type_id)));
            }
            if (m.name_off == 0 || name == anonymous)
                && depth < 16
                && let Some(inner) = self.resolve_struct(m.type_id)?
                && let Some((bits, ty)) = self.find_member(&inner, want, depth + 1)?
            {
                return Ok(Some((m.bit_offset + bits, ty)));
            }
        }
        Ok(None)
    }

    /// Follows typedefs and qualifiers from `id` to a struct or union.
    fn resolve_struct(&self, mut id: u32) -> Result<Option<Record>, BtfError> {
        for _ in 0..16 {
            let Some(record) = self.record(id)? else {
                return Ok(None);
            };
            match record.kind {
                kind::STRUCT | kind::UNION => return Ok(Some(record)),
                kind::TYPEDEF | kind::CONST | kind::VOLATILE | kind::RESTRICT | kind::TYPE_TAG => {
                    id = record.size_or_type;
                }
                _ => return Ok(None),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds BTF blobs for tests: types are appended as records, strings deduplicated.
    pub(crate) struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        /// The base's strings, which split BTF names by the base's offsets.
        base_strings: Vec<u8>,
        str_base: u32,
        next_id: u32,
    }

    impl Builder {
        pub(crate) fn base() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                base_strings: Vec::new(),
                str_base: 0,
                next_id: 1,
            }
        }

        /// Split BTF on `base`: ids and string offsets continue the base's.
        pub(crate) fn split(base: &Self) -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                base_strings: base.strings.clone(),
                str_base: base.str_base + base.strings.len() as u32,
                next_id: base.next_id,
            }
        }

        /// The name offset of `name` (0 for ""), added if new.
        pub(crate) fn string(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let mut at = 0;
            for s in self.base_strings.split(|&b| b == 0) {
                if s == name.as_bytes() {
                    return at as u32;
                }
                at += s.len() + 1;
            }
            let mut at = 0;
            for s in self.strings.split(|&b| b == 0) {
                if s == name.as_bytes() {
                    return self.str_base + at as u32;
                }
                at += s.len() + 1;
            }
            let at = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            self.str_base + at
        }

        fn push(&mut self, name_off: u32, info: u32, size_or_type: u32, tail: &[u8]) -> u32 {
            for v in [name_off, info, size_or_type] {
                self.types.extend_from_slice(&v.to_ne_bytes());
            }
            self.types.extend_from_slice(tail);
            self.next_id += 1;
            self.next_id - 1
        }

        pub(crate) fn int(&mut self, name: &str, size: u32) -> u32 {
            let n = self.string(name);
            self.push(n, kind::INT << 24, size, &(size * 8).to_ne_bytes())
        }

        pub(crate) fn ptr(&mut self, to: u32) -> u32 {
            self.push(0, kind::PTR << 24, to, &[])
        }

        pub(crate) fn typedef(&mut self, name: &str, to: u32) -> u32 {
            let n = self.string(name);
            self.push(n, kind::TYPEDEF << 24, to, &[])
        }

        pub(crate) fn func(&mut self, name: &str) -> u32 {
            let n = self.string(name);
            self.push(n, kind::FUNC << 24, 0, &[])
        }

        /// A struct (or union) of `(name, type, bit offset)` members.
        pub(crate) fn aggregate(
            &mut self,
            union: bool,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let n = self.string(name);
            let mut tail = Vec::new();
            for &(m, ty, bits) in members {
                let mn = self.string(m);
                for v in [mn, ty, bits] {
                    tail.extend_from_slice(&v.to_ne_bytes());
                }
            }
            let k = if union { kind::UNION } else { kind::STRUCT };
            self.push(n, k << 24 | members.len() as u32, size, &tail)
        }

        pub(crate) fn bytes(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_ne_bytes());
            out.extend_from_slice(&[1, 0]);
            for v in [
                HEADER_LEN as u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&v.to_ne_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    pub(crate) fn lookup(bytes: Vec<u8>, names: &[&str]) -> BtfLookup {
        let layer = Layer::open(Path::new("test"), Box::new(bytes), None).expect("opens");
        BtfLookup::index(vec![Arc::new(layer)], names.iter().copied()).expect("indexes")
    }

    pub(crate) fn lookup_split(bytes: Vec<u8>, base: &BtfLookup, names: &[&str]) -> BtfLookup {
        BtfLookup::split_from(
            Path::new("split"),
            Box::new(bytes),
            base,
            names.iter().copied(),
        )
        .expect("split opens")
    }

    /// A base with `struct path { mnt; dentry }`, `struct file { anon union { f_path }
    /// ; private_data }` behind a typedef, and a function.
    fn sample_base() -> Builder {
        let mut b = Builder::base();
        let long = b.int("long", 8);
        let vp = b.ptr(0);
        let path = b.aggregate(false, "path", 16, &[("mnt", vp, 0), ("dentry", vp, 64)]);
        let path_t = b.typedef("path_t", path);
        let anon = b.aggregate(true, "", 16, &[("f_path", path_t, 0), ("other", long, 0)]);
        b.aggregate(
            false,
            "file",
            40,
            &[
                ("f_count", long, 0),
                ("", anon, 64),
                ("private_data", vp, 256),
            ],
        );
        b.func("vfs_read");
        b
    }

    #[test]
    fn resolves_nested_and_anonymous_members() {
        let names = [
            "file",
            "f_path",
            "dentry",
            "private_data",
            "vfs_read",
            "mnt",
        ];
        let btf = lookup(sample_base().bytes(), &names);
        let at = |s, p: &[&str]| btf.member_bit_offset(s, p).expect("reads");
        assert_eq!(at("file", &["f_path", "dentry"]), Some(64 + 64));
        assert_eq!(at("file", &["f_path"]), Some(64));
        assert_eq!(at("file", &["private_data"]), Some(256));
        assert_eq!(at("file", &["f_path", "nope"]), None, "not a wanted name");
        assert_eq!(at("file", &["mnt"]), None, "mnt is path's, not file's");
        assert_eq!(at("nofile", &["f_path"]), None);
        assert_eq!(btf.function_id("vfs_read"), Some(7));
        assert_eq!(btf.function_id("file"), None, "a struct is no function");
        assert!(btf.has_struct("file"));
    }

    #[test]
    fn split_btf_continues_the_base_ids_and_strings() {
        let base_builder = sample_base();
        let base = lookup(base_builder.bytes(), &["file"]);
        let mut split = Builder::split(&base_builder);
        // `file` is the base's string, reused by offset as split BTF does.
        let file_ptr_target = {
            let n = split.string("file");
            assert!(n < base_builder.strings.len() as u32, "the base's offset");
            6 // `struct file` is the base's 6th type.
        };
        let fp = split.ptr(file_ptr_target);
        let ovl = split.aggregate(
            false,
            "ovl_file",
            16,
            &[("realfile", fp, 0), ("upperfile", fp, 64)],
        );
        assert_eq!(ovl, 9, "split ids follow the base's 7 types");
        split.aggregate(false, "ovl_fs", 8, &[("file", fp, 0)]);
        let names = [
            "ovl_file",
            "realfile",
            "upperfile",
            "ovl_fs",
            "file",
            "private_data",
        ];
        let module = lookup_split(split.bytes(), &base, &names);
        let at = |s, p: &[&str]| module.member_bit_offset(s, p).expect("reads");
        assert_eq!(at("ovl_file", &["upperfile"]), Some(64));
        assert_eq!(at("ovl_file", &["realfile"]), Some(0));
        assert!(module.has_struct("ovl_fs"));
        // A base struct is found through the split view too.
        assert_eq!(at("file", &["private_data"]), Some(256));
        // And btf_rs reads the same split blob the same way.
        let rs_base = btf_rs::Btf::from_bytes(&base_builder.bytes()).expect("btf_rs base");
        let rs = btf_rs::Btf::from_split_bytes(&split.bytes(), &rs_base).expect("btf_rs split");
        let ids = rs.resolve_ids_by_name("ovl_file").expect("btf_rs finds it");
        assert_eq!(ids, vec![ovl]);
    }

    #[test]
    fn bitfield_members_keep_their_bit_offset() {
        let mut b = Builder::base();
        let int = b.int("int", 4);
        let n = b.string("s");
        let (f, g) = (b.string("f"), b.string("g"));
        let mut tail = Vec::new();
        for v in [f, int, 3 << 24 | 5, g, int, 1 << 24 | 40] {
            tail.extend_from_slice(&v.to_ne_bytes());
        }
        b.push(n, 1 << 31 | kind::STRUCT << 24 | 2, 8, &tail);
        let btf = lookup(b.bytes(), &["s", "f", "g"]);
        assert_eq!(btf.member_bit_offset("s", &["f"]).expect("reads"), Some(5));
        assert_eq!(btf.member_bit_offset("s", &["g"]).expect("reads"), Some(40));
    }

    #[test]
    fn bad_blobs_are_errors_naming_the_problem() {
        let mut bytes = sample_base().bytes();
        bytes[0] ^= 0xff;
        let err = Layer::open(Path::new("x"), Box::new(bytes), None)
            .err()
            .expect("bad magic");
        assert!(err.to_string().contains("magic"), "{err}");

        let mut bytes = sample_base().bytes();
        // The first record (the int "long") gets kind 31.
        bytes[HEADER_LEN + 7] = 31;
        let err = Layer::open(Path::new("x"), Box::new(bytes), None)
            .err()
            .expect("bad kind");
        assert!(err.to_string().contains("unknown kind 31"), "{err}");

        let b = sample_base();
        let cut = b.bytes()[..HEADER_LEN + b.types.len() - 5].to_vec();
        let err = Layer::open(Path::new("x"), Box::new(cut), None)
            .err()
            .expect("truncated");
        assert!(err.to_string().contains("x is not valid BTF"), "{err}");
    }
}
