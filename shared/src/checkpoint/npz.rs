//! Reading (and, for tests, writing) NumPy `.npy` arrays and `.npz` archives.
//!
//! Google publishes its ViT checkpoints as `.npz` files: zip archives, stored or
//! deflated, holding one `.npy` file per parameter. Only float32 and float16
//! arrays are accepted, since that is all a checkpoint holds; everything is
//! converted to `f32` in C (row-major) order.
//!
//! Decisions worth knowing:
//! - Zip entries whose names do not end in `.npy` (and directories) are
//!   skipped, so an archive with a README or metadata alongside still loads.
//!   An archive with no `.npy` entry at all is an error.
//! - Byte order: `<` is little-endian, `>` big-endian (converted). `|`, `=`
//!   and no marker mean "native order"; NumPy never writes those for floats,
//!   and every platform that produces these files is little-endian, so they
//!   are read as little-endian.
//! - Bytes after the array data are rejected: they mean the header's shape or
//!   dtype does not describe the data. In an archive, reading to the end of
//!   the entry also makes the zip reader verify the entry's CRC.
//! - Hostile input cannot cause a panic or a large up-front allocation: the
//!   header is capped at [`MAX_HEADER_LEN`] bytes, sizes use checked
//!   arithmetic, and data is read incrementally, so memory grows only with
//!   the bytes actually present.

use std::io::{self, Read, Seek, Write};

use zip::result::ZipError;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

/// The first six bytes of every `.npy` file.
const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Largest header accepted. NumPy itself refuses headers over 10 000 bytes by
/// default; this leaves room for odd writers while bounding the allocation.
pub const MAX_HEADER_LEN: usize = 64 * 1024;

/// Initial buffer for array data. Larger arrays grow the buffer as bytes
/// arrive, so a header claiming terabytes costs only what the file holds.
const INITIAL_DATA_CAPACITY: usize = 1 << 20;

/// One array from an .npy file, converted to f32, C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Everything that can go wrong reading or writing `.npy` / `.npz` data.
#[derive(Debug, thiserror::Error)]
pub enum NpzError {
    #[error("not a readable .npz (zip) archive — is the file complete and really an .npz?")]
    NotZip {
        #[source]
        source: ZipError,
    },
    #[error("cannot open entry `{name}` of the .npz archive")]
    ZipEntry {
        name: String,
        #[source]
        source: ZipError,
    },
    #[error("the archive contains no .npy entries; is it a NumPy .npz file?")]
    NoArrays,
    #[error("reading `{name}` failed (file damaged or truncated?)")]
    Io {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("`{name}` is not a .npy array: it does not start with the \\x93NUMPY magic")]
    NotNpy { name: String },
    #[error(
        "`{name}` uses .npy format version {major}.{minor}; only 1.0, 2.0 and 3.0 are supported"
    )]
    UnsupportedVersion { name: String, major: u8, minor: u8 },
    #[error("`{name}` declares a {len}-byte .npy header; at most {max} bytes are accepted", max = MAX_HEADER_LEN)]
    HeaderTooLong { name: String, len: u64 },
    #[error("`{name}` ends inside its .npy header; the file is truncated")]
    TruncatedHeader { name: String },
    #[error("`{name}` has a malformed .npy header: {reason}")]
    MalformedHeader { name: String, reason: String },
    #[error(
        "`{name}` has dtype `{descr}`; only float32 ('<f4') and float16 ('<f2') arrays are supported — convert with arr.astype(np.float32)"
    )]
    UnsupportedDtype { name: String, descr: String },
    #[error(
        "`{name}` holds Python objects (dtype `{descr}`), which would need pickle; only float32/float16 arrays are supported"
    )]
    ObjectArray { name: String, descr: String },
    #[error(
        "`{name}`: Fortran order not supported; re-save it with np.ascontiguousarray(arr) first"
    )]
    FortranOrder { name: String },
    #[error("`{name}` declares shape {shape:?}, whose size overflows; the header is corrupt")]
    ShapeTooLarge { name: String, shape: Vec<u64> },
    #[error(
        "`{name}` is truncated: its header promises {expected} bytes of array data but only {found} are present"
    )]
    Truncated {
        name: String,
        expected: u64,
        found: u64,
    },
    #[error(
        "`{name}` has bytes after the {expected} bytes of array data its header describes; its shape or dtype is probably wrong"
    )]
    TrailingData { name: String, expected: u64 },
    #[error(
        "cannot write `{name}`: shape {shape:?} needs a different number of values than the {len} given"
    )]
    ShapeMismatch {
        name: String,
        shape: Vec<usize>,
        len: usize,
    },
    #[error("writing `{name}` failed")]
    Write {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("writing the .npz archive failed")]
    WriteZip {
        #[source]
        source: ZipError,
    },
}

/// An `.npz` archive whose arrays are described (names and shapes, from their headers)
/// before any data is read, so that a caller can check them against what it expects
/// and read only those: a small archive whose entries inflate to gigabytes costs
/// nothing until one of them is asked for.
pub struct NpzReader<R> {
    archive: ZipArchive<R>,
    members: Vec<Member>,
}

/// One `.npy` entry: its name without `.npy`, where it is, and its declared shape.
struct Member {
    key: String,
    index: usize,
    entry_name: String,
    shape: Vec<usize>,
}

impl<R: Read + Seek> NpzReader<R> {
    /// Reads the archive's directory and every `.npy` entry's header. Entries not
    /// ending in `.npy` are skipped; an archive without any is an error.
    pub fn open(reader: R) -> Result<Self, NpzError> {
        let mut archive = ZipArchive::new(reader).map_err(|source| NpzError::NotZip { source })?;
        let mut members = Vec::new();
        for index in 0..archive.len() {
            let entry_name = archive
                .name_for_index(index)
                .map_or_else(|| format!("#{index}"), str::to_owned);
            let Some(key) = entry_name.strip_suffix(".npy") else {
                continue;
            };
            let key = key.to_owned();
            let mut entry = archive
                .by_index(index)
                .map_err(|source| NpzError::ZipEntry {
                    name: entry_name.clone(),
                    source,
                })?;
            if entry.is_dir() {
                continue;
            }
            let (header, _) = read_header(&mut entry, &entry_name)?;
            members.push(Member {
                key,
                index,
                entry_name,
                shape: header.shape,
            });
        }
        if members.is_empty() {
            return Err(NpzError::NoArrays);
        }
        Ok(Self { archive, members })
    }

    /// Array names (without `.npy`) and declared shapes, in archive order.
    pub fn shapes(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.members
            .iter()
            .map(|member| (member.key.as_str(), member.shape.as_slice()))
    }

    /// Reads and converts the array `key`.
    pub fn read(&mut self, key: &str) -> Result<NpyArray, NpzError> {
        let member = self
            .members
            .iter()
            .find(|member| member.key == key)
            .ok_or(NpzError::NoArrays)?;
        let entry = self
            .archive
            .by_index(member.index)
            .map_err(|source| NpzError::ZipEntry {
                name: member.entry_name.clone(),
                source,
            })?;
        let declared = entry.size();
        // The extra byte lets the trailing-data probe reach the zip reader's
        // end of stream, which is where it verifies the CRC.
        let limited = entry.take(declared.saturating_add(1));
        read_npy_inner(limited, &member.entry_name, Some(declared))
    }
}

/// Reads every `.npy` entry of an npz archive; names lose the `.npy` suffix; archive order.
///
/// Entries not ending in `.npy` are skipped; an archive without any is an error.
pub fn read_npz<R: Read + Seek>(reader: R) -> Result<Vec<(String, NpyArray)>, NpzError> {
    let mut npz = NpzReader::open(reader)?;
    let keys: Vec<String> = npz.shapes().map(|(key, _)| key.to_owned()).collect();
    keys.into_iter()
        .map(|key| {
            let array = npz.read(&key)?;
            Ok((key, array))
        })
        .collect()
}

/// Parses one .npy stream.
///
/// The stream must end where the array data ends; extra bytes are an error.
pub fn read_npy<R: Read>(reader: R, name: &str) -> Result<NpyArray, NpzError> {
    read_npy_inner(reader, name, None)
}

/// Element types a checkpoint may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32,
    F16,
}

impl Dtype {
    fn size(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 => 2,
        }
    }
}

/// What a valid header says about the data that follows.
#[derive(Debug, Clone, PartialEq)]
struct Header {
    dtype: Dtype,
    big_endian: bool,
    shape: Vec<usize>,
}

/// Reads the magic, version and header of a .npy stream: the header and the length of
/// everything before the data.
fn read_header<R: Read>(reader: &mut R, name: &str) -> Result<(Header, u64), NpzError> {
    let io_err = |source: io::Error| NpzError::Io {
        name: name.to_owned(),
        source,
    };
    let truncated_header = || NpzError::TruncatedHeader {
        name: name.to_owned(),
    };

    let mut preamble = [0u8; 8];
    let got = read_up_to(reader, &mut preamble).map_err(io_err)?;
    if got < MAGIC.len() || preamble[..MAGIC.len()] != MAGIC[..] {
        return Err(NpzError::NotNpy {
            name: name.to_owned(),
        });
    }
    if got < preamble.len() {
        return Err(truncated_header());
    }
    let (major, minor) = (preamble[6], preamble[7]);
    let header_len: u64 = match major {
        1 => {
            let mut len = [0u8; 2];
            if read_up_to(reader, &mut len).map_err(io_err)? < len.len() {
                return Err(truncated_header());
            }
            u16::from_le_bytes(len).into()
        }
        2 | 3 => {
            let mut len = [0u8; 4];
            if read_up_to(reader, &mut len).map_err(io_err)? < len.len() {
                return Err(truncated_header());
            }
            u32::from_le_bytes(len).into()
        }
        _ => {
            return Err(NpzError::UnsupportedVersion {
                name: name.to_owned(),
                major,
                minor,
            });
        }
    };
    let header_len = match usize::try_from(header_len) {
        Ok(len) if len <= MAX_HEADER_LEN => len,
        _ => {
            return Err(NpzError::HeaderTooLong {
                name: name.to_owned(),
                len: header_len,
            });
        }
    };
    let mut header_bytes = vec![0u8; header_len];
    if read_up_to(reader, &mut header_bytes).map_err(io_err)? < header_len {
        return Err(truncated_header());
    }
    let prefix = (if major == 1 { 10 } else { 12 }) + header_len as u64;
    Ok((parse_header(&header_bytes, name)?, prefix))
}

/// `entry_size`, when known (zip entries), lets a header that claims more
/// data than the entry holds fail before anything is read.
fn read_npy_inner<R: Read>(
    mut reader: R,
    name: &str,
    entry_size: Option<u64>,
) -> Result<NpyArray, NpzError> {
    let io_err = |source: io::Error| NpzError::Io {
        name: name.to_owned(),
        source,
    };
    let (header, prefix) = read_header(&mut reader, name)?;

    let overflow = || NpzError::ShapeTooLarge {
        name: name.to_owned(),
        shape: header.shape.iter().map(|&d| d as u64).collect(),
    };
    let count = header
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;
    let expected = u64::try_from(count)
        .ok()
        .and_then(|c| c.checked_mul(header.dtype.size()))
        .ok_or_else(overflow)?;

    if let Some(size) = entry_size {
        let available = size.saturating_sub(prefix);
        if expected > available {
            return Err(NpzError::Truncated {
                name: name.to_owned(),
                expected,
                found: available,
            });
        }
    }

    // `take` + `read_to_end` grows the buffer only as real bytes arrive.
    let initial =
        usize::try_from(expected).map_or(INITIAL_DATA_CAPACITY, |e| e.min(INITIAL_DATA_CAPACITY));
    let mut bytes = Vec::with_capacity(initial);
    reader
        .by_ref()
        .take(expected)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if (bytes.len() as u64) < expected {
        return Err(NpzError::Truncated {
            name: name.to_owned(),
            expected,
            found: bytes.len() as u64,
        });
    }
    let mut probe = [0u8; 1];
    if read_up_to(&mut reader, &mut probe).map_err(io_err)? != 0 {
        return Err(NpzError::TrailingData {
            name: name.to_owned(),
            expected,
        });
    }

    let data = match (header.dtype, header.big_endian) {
        (Dtype::F32, false) => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        (Dtype::F32, true) => bytes
            .chunks_exact(4)
            .map(|b| f32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        (Dtype::F16, false) => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        (Dtype::F16, true) => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_be_bytes([b[0], b[1]]).to_f32())
            .collect(),
    };
    Ok(NpyArray {
        shape: header.shape,
        data,
    })
}

/// Like `read_exact`, but reports how many bytes arrived instead of failing
/// at end of stream, so callers can say *what* was truncated.
fn read_up_to<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A value in the header dict. `Other` keeps the raw text of values this
/// reader does not model (e.g. a structured dtype list) for error messages.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<u64>),
    Other(String),
}

/// Parses the header, a Python dict literal such as
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`,
/// and checks it describes an array this reader supports.
fn parse_header(bytes: &[u8], name: &str) -> Result<Header, NpzError> {
    let malformed = |reason: String| NpzError::MalformedHeader {
        name: name.to_owned(),
        reason,
    };
    let entries = DictParser { s: bytes, pos: 0 }.parse().map_err(malformed)?;

    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    for (key, value) in entries {
        let slot = match key.as_str() {
            "descr" => &mut descr,
            "fortran_order" => &mut fortran,
            "shape" => &mut shape,
            _ => return Err(malformed(format!("unexpected key '{key}'"))),
        };
        if slot.replace(value).is_some() {
            return Err(malformed(format!("key '{key}' appears twice")));
        }
    }
    let missing = |key: &str| malformed(format!("missing key '{key}'"));
    let descr = descr.ok_or_else(|| missing("descr"))?;
    let fortran = fortran.ok_or_else(|| missing("fortran_order"))?;
    let shape = shape.ok_or_else(|| missing("shape"))?;

    let (dtype, big_endian) = match descr {
        Value::Str(s) => parse_descr(&s, name)?,
        other => {
            return Err(NpzError::UnsupportedDtype {
                name: name.to_owned(),
                descr: describe(&other),
            });
        }
    };
    match fortran {
        Value::Bool(false) => {}
        Value::Bool(true) => {
            return Err(NpzError::FortranOrder {
                name: name.to_owned(),
            });
        }
        other => {
            return Err(malformed(format!(
                "'fortran_order' must be True or False, found {}",
                describe(&other)
            )));
        }
    }
    let Value::Tuple(dims) = shape else {
        return Err(malformed(format!(
            "'shape' must be a tuple of integers, found {}",
            describe(&shape)
        )));
    };
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| NpzError::ShapeTooLarge {
            name: name.to_owned(),
            shape: dims.clone(),
        })?;
    Ok(Header {
        dtype,
        big_endian,
        shape,
    })
}

/// Renders a header value for an error message.
fn describe(value: &Value) -> String {
    match value {
        Value::Str(s) => format!("'{s}'"),
        Value::Bool(b) => if *b { "True" } else { "False" }.to_owned(),
        Value::Tuple(t) => format!("{t:?}"),
        Value::Other(raw) => raw.clone(),
    }
}

/// Maps a NumPy type string to a supported dtype and its byte order.
fn parse_descr(descr: &str, name: &str) -> Result<(Dtype, bool), NpzError> {
    let (big_endian, kind) = match descr.as_bytes().first() {
        Some(b'>') => (true, &descr[1..]),
        Some(b'<' | b'|' | b'=') => (false, &descr[1..]),
        _ => (false, descr),
    };
    match kind {
        "f4" => Ok((Dtype::F32, big_endian)),
        "f2" => Ok((Dtype::F16, big_endian)),
        k if k.starts_with('O') => Err(NpzError::ObjectArray {
            name: name.to_owned(),
            descr: descr.to_owned(),
        }),
        _ => Err(NpzError::UnsupportedDtype {
            name: name.to_owned(),
            descr: descr.to_owned(),
        }),
    }
}

/// A small recursive-descent parser for the subset of Python literal syntax
/// that `.npy` headers use. Errors are human-readable reasons.
struct DictParser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl DictParser<'_> {
    fn parse(mut self) -> Result<Vec<(String, Value)>, String> {
        self.skip_ws();
        self.expect(b'{')?;
        let mut entries = Vec::new();
        loop {
            self.skip_ws();
            if self.eat(b'}') {
                break;
            }
            let key = self.string()?;
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            let value = self.value()?;
            entries.push((key, value));
            self.skip_ws();
            if self.eat(b'}') {
                break;
            }
            self.expect(b',')?;
        }
        self.skip_ws();
        if self.pos != self.s.len() {
            return Err(format!(
                "unexpected text after the closing '}}' at byte {}",
                self.pos
            ));
        }
        Ok(entries)
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(match self.peek() {
                Some(found) => format!(
                    "expected '{}' at byte {}, found '{}'",
                    c as char,
                    self.pos,
                    found.escape_ascii()
                ),
                None => format!("expected '{}' but the header ended", c as char),
            })
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("expected a quoted string at byte {}", self.pos)),
        };
        self.pos += 1;
        let start = self.pos;
        let len = self.s[start..]
            .iter()
            .position(|&c| c == quote)
            .ok_or_else(|| "unterminated string".to_owned())?;
        self.pos = start + len + 1;
        Ok(String::from_utf8_lossy(&self.s[start..start + len]).into_owned())
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.peek() {
            Some(b'\'' | b'"') => self.string().map(Value::Str),
            Some(b'(') => self.tuple(),
            Some(b'[') => self.raw_bracketed().map(Value::Other),
            _ if self.s[self.pos..].starts_with(b"True") => {
                self.pos += 4;
                Ok(Value::Bool(true))
            }
            _ if self.s[self.pos..].starts_with(b"False") => {
                self.pos += 5;
                Ok(Value::Bool(false))
            }
            _ => Err(format!("unsupported value at byte {}", self.pos)),
        }
    }

    /// `()`, `(5,)`, `(3, 4)`; Python 2 writers may append `L` to integers.
    fn tuple(&mut self) -> Result<Value, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            self.skip_ws();
            if self.eat(b')') {
                break;
            }
            dims.push(self.integer()?);
            self.skip_ws();
            if self.eat(b')') {
                break;
            }
            self.expect(b',')?;
        }
        Ok(Value::Tuple(dims))
    }

    fn integer(&mut self) -> Result<u64, String> {
        let start = self.pos;
        let mut value: u64 = 0;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(c - b'0')))
                .ok_or_else(|| format!("shape dimension at byte {start} is too large"))?;
            self.pos += 1;
        }
        if self.pos == start {
            return Err(format!(
                "expected a non-negative integer in the shape at byte {start}"
            ));
        }
        if matches!(self.peek(), Some(b'L' | b'l')) {
            self.pos += 1;
        }
        Ok(value)
    }

    /// Skips a bracketed value (quotes respected) and returns its text.
    fn raw_bracketed(&mut self) -> Result<String, String> {
        let start = self.pos;
        let mut depth = 0usize;
        while let Some(c) = self.peek() {
            match c {
                b'[' | b'(' => depth += 1,
                b']' | b')' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        self.pos += 1;
                        return Ok(String::from_utf8_lossy(&self.s[start..self.pos]).into_owned());
                    }
                }
                b'\'' | b'"' => {
                    self.string()?;
                    continue;
                }
                _ => {}
            }
            self.pos += 1;
        }
        Err("unterminated bracket".to_owned())
    }
}

/// Builds the bytes of one `.npy` header (version 1.0 when it fits, else
/// 2.0), padded so the data starts at a multiple of 64 bytes as NumPy does.
fn npy_header(shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [] => "()".to_owned(),
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    // Version 1.0 has a 10-byte preamble and a u16 length; bigger dicts need 2.0.
    let (version, prefix) = if dict.len() + 1 + 64 + 10 <= usize::from(u16::MAX) {
        (1u8, 10)
    } else {
        (2u8, 12)
    };
    let unpadded = prefix + dict.len() + 1;
    dict.extend(std::iter::repeat_n(' ', (64 - unpadded % 64) % 64));
    dict.push('\n');

    let mut out = Vec::with_capacity(prefix + dict.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        // Checked above: the dict fits in u16.
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(dict.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Writes an npz (stored, no compression) of f32 arrays — used by tests elsewhere to build hostile/edge-case files.
pub fn write_npz<W: Write + Seek>(writer: W, arrays: &[(&str, &NpyArray)]) -> Result<(), NpzError> {
    let mut zip = ZipWriter::new(writer);
    for &(name, array) in arrays {
        let count = array
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if count != Some(array.data.len()) {
            return Err(NpzError::ShapeMismatch {
                name: name.to_owned(),
                shape: array.shape.clone(),
                len: array.data.len(),
            });
        }
        let header = npy_header(&array.shape);
        let total = header.len() as u64 + 4 * array.data.len() as u64;
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .large_file(total >= u64::from(u32::MAX));
        let entry_name = format!("{name}.npy");
        zip.start_file(entry_name.as_str(), options)
            .map_err(|source| NpzError::WriteZip { source })?;
        let write_err = |source: io::Error| NpzError::Write {
            name: entry_name.clone(),
            source,
        };
        zip.write_all(&header).map_err(write_err)?;
        // Chunked so a large array is not duplicated in memory as bytes.
        let mut buf = Vec::with_capacity(4 * 4096);
        for chunk in array.data.chunks(4096) {
            buf.clear();
            for v in chunk {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            zip.write_all(&buf).map_err(write_err)?;
        }
    }
    zip.finish()
        .map_err(|source| NpzError::WriteZip { source })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn arr(shape: &[usize], data: &[f32]) -> NpyArray {
        NpyArray {
            shape: shape.to_vec(),
            data: data.to_vec(),
        }
    }

    /// A raw .npy stream with the given version, header dict and data bytes.
    fn npy(major: u8, dict: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[major, 0]);
        if major == 1 {
            out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(dict.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(dict.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn npz_bytes(arrays: &[(&str, &NpyArray)]) -> Vec<u8> {
        let mut cursor = Cursor::new(Vec::new());
        write_npz(&mut cursor, arrays).expect("write npz");
        cursor.into_inner()
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn round_trip_keeps_names_order_shapes_and_values() {
        let a = arr(
            &[2, 3],
            &[1.0, -2.5, 3.25, f32::MAX, f32::MIN_POSITIVE, 0.0],
        );
        let b = arr(&[], &[42.0]);
        let c = arr(&[5], &[1.0, 2.0, 3.0, 4.0, 5.0]);
        let d = arr(&[0, 7], &[]);
        let bytes = npz_bytes(&[
            ("Transformer/encoderblock_0/LayerNorm_0/scale", &a),
            ("z_scalar", &b),
            ("a_vector", &c),
            ("empty", &d),
        ]);
        let read = read_npz(Cursor::new(bytes)).expect("read npz");
        let names: Vec<&str> = read.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "Transformer/encoderblock_0/LayerNorm_0/scale",
                "z_scalar",
                "a_vector",
                "empty"
            ]
        );
        assert_eq!(read[0].1, a);
        assert_eq!(read[1].1, b);
        assert_eq!(read[2].1, c);
        assert_eq!(read[3].1, d);
    }

    #[test]
    fn written_headers_are_numpy_style_and_aligned() {
        let header = npy_header(&[3, 4]);
        assert_eq!(header.len() % 64, 0);
        let text = std::str::from_utf8(&header[10..]).expect("ascii");
        assert!(text.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }"));
        assert!(text.ends_with('\n'));
        assert!(std::str::from_utf8(&npy_header(&[5])[10..]).is_ok_and(|t| t.contains("(5,)")));
        assert!(std::str::from_utf8(&npy_header(&[])[10..]).is_ok_and(|t| t.contains("()")));
    }

    #[test]
    fn reads_float16_data() {
        let values = [1.0f32, -0.5, 65504.0, 0.000_061_035_156];
        let data: Vec<u8> = values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let bytes = npy(
            1,
            "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 2), }\n",
            &data,
        );
        let a = read_npy(Cursor::new(bytes), "h").expect("f16");
        assert_eq!(a, arr(&[2, 2], &values));
    }

    #[test]
    fn reads_scalar_and_1d_shapes_and_python2_longs() {
        let bytes = npy(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (), }\n",
            &f32_bytes(&[7.5]),
        );
        assert_eq!(
            read_npy(Cursor::new(bytes), "s").expect("scalar"),
            arr(&[], &[7.5])
        );
        let bytes = npy(
            1,
            "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (3L,)}",
            &f32_bytes(&[1.0, 2.0, 3.0]),
        );
        assert_eq!(
            read_npy(Cursor::new(bytes), "v").expect("1-d"),
            arr(&[3], &[1.0, 2.0, 3.0])
        );
    }

    #[test]
    fn reads_v2_and_v3_headers_and_big_endian() {
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n";
        for major in [2, 3] {
            let bytes = npy(major, dict, &f32_bytes(&[1.5, -3.0]));
            let a = read_npy(Cursor::new(bytes), "v2").expect("v2/v3");
            assert_eq!(a, arr(&[2], &[1.5, -3.0]));
        }
        let be: Vec<u8> = [1.5f32, -3.0]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let bytes = npy(
            1,
            "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }",
            &be,
        );
        assert_eq!(
            read_npy(Cursor::new(bytes), "be").expect("big-endian"),
            arr(&[2], &[1.5, -3.0])
        );
    }

    #[test]
    fn unknown_version_is_rejected() {
        let bytes = npy(
            4,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (), }",
            &[],
        );
        let err = read_npy(Cursor::new(bytes), "x").expect_err("v4");
        assert!(
            matches!(err, NpzError::UnsupportedVersion { major: 4, .. }),
            "{err}"
        );
    }

    #[test]
    fn fortran_order_is_rejected() {
        let bytes = npy(
            1,
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
            &f32_bytes(&[0.0; 4]),
        );
        let err = read_npy(Cursor::new(bytes), "kernel").expect_err("fortran");
        assert!(matches!(err, NpzError::FortranOrder { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("Fortran order not supported") && msg.contains("kernel"),
            "{msg}"
        );
    }

    #[test]
    fn object_dtype_is_rejected() {
        let bytes = npy(
            1,
            "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
            b"\x80\x04pickle...",
        );
        let err = read_npy(Cursor::new(bytes), "meta").expect_err("pickle");
        assert!(matches!(err, NpzError::ObjectArray { .. }));
        assert!(err.to_string().contains("meta") && err.to_string().contains("|O"));
    }

    #[test]
    fn int_and_other_dtypes_are_rejected_by_name() {
        for descr in ["'<i4'", "'<f8'", "'|u1'", "[('a', '<f4')]"] {
            let dict = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': (1,), }}");
            let bytes = npy(1, &dict, &[0; 8]);
            let err = read_npy(Cursor::new(bytes), "labels").expect_err(descr);
            assert!(
                matches!(err, NpzError::UnsupportedDtype { .. }),
                "{descr}: {err}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains("labels") && msg.contains(descr.trim_matches('\'')),
                "{msg}"
            );
        }
    }

    #[test]
    fn malformed_headers_are_rejected() {
        let cases = [
            "{'descr': '<f4', 'fortran_order': False}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, -1), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'shape': (2,)}",
            "{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,) junk",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,)}",
            "",
        ];
        for dict in cases {
            let bytes = npy(1, dict, &f32_bytes(&[0.0, 0.0]));
            let err = read_npy(Cursor::new(bytes), "bad").expect_err(dict);
            assert!(
                matches!(err, NpzError::MalformedHeader { .. }),
                "{dict}: {err}"
            );
        }
        let err = read_npy(Cursor::new(b"PK\x03\x04 not npy".to_vec()), "bad").expect_err("magic");
        assert!(matches!(err, NpzError::NotNpy { .. }));
    }

    #[test]
    fn oversized_header_length_is_refused_without_reading_it() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[2, 0]);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = read_npy(Cursor::new(bytes), "h").expect_err("long header");
        assert!(matches!(err, NpzError::HeaderTooLong { .. }), "{err}");
    }

    #[test]
    fn truncated_npy_is_rejected() {
        let full = npy(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }\n",
            &f32_bytes(&[1.0; 12]),
        );
        let err = read_npy(Cursor::new(&full[..full.len() - 5]), "t").expect_err("data");
        assert!(
            matches!(
                err,
                NpzError::Truncated {
                    expected: 48,
                    found: 43,
                    ..
                }
            ),
            "{err}"
        );
        let err = read_npy(Cursor::new(&full[..20]), "t").expect_err("header");
        assert!(matches!(err, NpzError::TruncatedHeader { .. }), "{err}");
        let err = read_npy(Cursor::new(&full[..7]), "t").expect_err("preamble");
        assert!(matches!(err, NpzError::TruncatedHeader { .. }), "{err}");
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = npy(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
            &f32_bytes(&[1.0]),
        );
        bytes.push(0);
        let err = read_npy(Cursor::new(bytes), "t").expect_err("trailing");
        assert!(
            matches!(err, NpzError::TrailingData { expected: 4, .. }),
            "{err}"
        );
    }

    #[test]
    fn huge_claimed_shape_fails_fast_without_allocating() {
        // 2^40 elements: 4 TiB of f32 claimed, 16 bytes present.
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }";
        let bytes = npy(1, dict, &f32_bytes(&[1.0; 4]));
        let err = read_npy(Cursor::new(bytes), "big").expect_err("huge");
        assert!(
            matches!(err, NpzError::Truncated { expected, found: 16, .. } if expected == 1 << 42),
            "{err}"
        );
        // (2^40, 2^40) overflows the element count itself.
        let dict =
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776), }";
        let err = read_npy(Cursor::new(npy(1, dict, &[])), "big").expect_err("overflow");
        assert!(matches!(err, NpzError::ShapeTooLarge { .. }), "{err}");
    }

    #[test]
    fn huge_claimed_shape_inside_npz_fails_before_reading() {
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }";
        let mut cursor = Cursor::new(Vec::new());
        let mut zip = ZipWriter::new(&mut cursor);
        zip.start_file("w.npy", SimpleFileOptions::default())
            .expect("start");
        zip.write_all(&npy(1, dict, &f32_bytes(&[1.0; 4])))
            .expect("write");
        zip.finish().expect("finish");
        let err = read_npz(Cursor::new(cursor.into_inner())).expect_err("huge");
        assert!(
            matches!(err, NpzError::Truncated { found: 16, .. }),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_not_an_npz() {
        let err = read_npz(Cursor::new(b"this is not a zip archive at all".to_vec()))
            .expect_err("garbage");
        assert!(matches!(err, NpzError::NotZip { .. }), "{err}");
        let err = read_npz(Cursor::new(Vec::new())).expect_err("empty");
        assert!(matches!(err, NpzError::NotZip { .. }), "{err}");
    }

    #[test]
    fn truncated_npz_is_rejected() {
        let a = arr(&[64], &[0.25; 64]);
        let bytes = npz_bytes(&[("a", &a), ("b", &a)]);
        for cut in [bytes.len() / 2, bytes.len() - 1, 30] {
            let err = read_npz(Cursor::new(&bytes[..cut])).expect_err("truncated");
            assert!(
                matches!(err, NpzError::NotZip { .. }),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn corrupted_entry_data_fails_the_crc_check() {
        let a = arr(&[16], &[0.5; 16]);
        let mut bytes = npz_bytes(&[("a", &a)]);
        // Flip a byte inside the stored array data (after the local header and npy header).
        let pos = bytes
            .windows(4)
            .position(|w| w == 0.5f32.to_le_bytes())
            .expect("data present");
        bytes[pos] ^= 0xFF;
        let err = read_npz(Cursor::new(bytes)).expect_err("crc");
        assert!(matches!(err, NpzError::Io { .. }), "{err}");
    }

    #[test]
    fn deflated_entries_and_non_npy_entries() {
        let mut cursor = Cursor::new(Vec::new());
        let mut zip = ZipWriter::new(&mut cursor);
        let deflated = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
        zip.start_file("README.txt", deflated).expect("start");
        zip.write_all(b"not an array").expect("write");
        zip.add_directory("Transformer/", deflated).expect("dir");
        zip.start_file("Transformer/w.npy", deflated)
            .expect("start");
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
        zip.write_all(&npy(1, dict, &f32_bytes(&[3.0, 4.0])))
            .expect("write");
        zip.finish().expect("finish");
        let read = read_npz(Cursor::new(cursor.into_inner())).expect("read");
        assert_eq!(
            read,
            vec![("Transformer/w".to_owned(), arr(&[2], &[3.0, 4.0]))]
        );

        let mut cursor = Cursor::new(Vec::new());
        let mut zip = ZipWriter::new(&mut cursor);
        zip.start_file("notes.txt", deflated).expect("start");
        zip.finish().expect("finish");
        let err = read_npz(Cursor::new(cursor.into_inner())).expect_err("no arrays");
        assert!(matches!(err, NpzError::NoArrays), "{err}");
    }

    #[test]
    fn write_rejects_shape_data_mismatch() {
        let bad = arr(&[2, 2], &[1.0, 2.0, 3.0]);
        let err = write_npz(Cursor::new(Vec::new()), &[("bad", &bad)]).expect_err("mismatch");
        assert!(
            matches!(err, NpzError::ShapeMismatch { len: 3, .. }),
            "{err}"
        );
    }
}
