//! safetensors files to and from named f32 arrays, read one tensor at a time.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Mutex;

use safetensors::tensor::{Dtype, Metadata, TensorInfo, TensorView};

use super::CheckpointError;
use super::params::Array;

/// Where the bytes of a safetensors file are: in memory, in a file, or (in the browser)
/// in a JavaScript buffer. Loading reads the header, then one tensor at a time.
pub trait ByteSource {
    /// The number of bytes.
    fn len(&self) -> u64;

    /// Copies the `buf.len()` bytes at `offset` into `buf`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ByteSource for &[u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        let bytes = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

impl ByteSource for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.as_slice().read_at(offset, buf)
    }
}

/// A file read piece by piece, so that its bytes are never all in memory.
pub struct FileSource {
    file: Mutex<File>,
    len: u64,
}

impl FileSource {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            file: Mutex::new(file),
            len,
        })
    }
}

impl ByteSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let mut file = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("a reader of this file panicked"))?;
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(buf)
    }
}

/// Bytes read at once when converting a tensor: a multiple of every element size.
const CHUNK_BYTES: usize = 1 << 20;

/// Headers larger than this are refused (the safetensors crate's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The tensors of one or more safetensors files (the shards of one model), read from
/// their [`ByteSource`]s: the headers at once, each tensor only when asked for, so
/// loading holds the converted parameters and one tensor's bytes, never a whole file.
pub struct Tensors<'a> {
    /// Every tensor's name, with its shard, description and where its data starts.
    index: BTreeMap<String, (usize, TensorInfo, u64)>,
    shards: Vec<&'a dyn ByteSource>,
}

impl<'a> Tensors<'a> {
    /// Reads and checks the headers of `shards`; a name in two shards is an error.
    pub fn parse(shards: &[&'a dyn ByteSource]) -> Result<Self, CheckpointError> {
        let mut index = BTreeMap::new();
        for (shard, source) in shards.iter().enumerate() {
            let (data_start, metadata) = read_header(*source)?;
            for (name, info) in metadata.tensors() {
                if name == "__metadata__" {
                    continue;
                }
                if index
                    .insert(name.clone(), (shard, info.clone(), data_start))
                    .is_some()
                {
                    return Err(CheckpointError::Safetensors(format!(
                        "tensor `{name}` appears in two shards"
                    )));
                }
            }
        }
        Ok(Self {
            index,
            shards: shards.to_vec(),
        })
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.index.get(name).map(|(_, info, _)| info.shape.clone())
    }

    /// Number of elements of tensor `name`, if present.
    pub fn len(&self, name: &str) -> Option<usize> {
        self.index
            .get(name)
            .map(|(_, info, _)| info.shape.iter().product::<usize>())
    }

    /// Tensor `name` as f32 (float32, float16 and bfloat16 are accepted).
    pub fn get(&self, name: &str) -> Result<Array, CheckpointError> {
        let (shard, info, data_start) = self
            .index
            .get(name)
            .ok_or_else(|| CheckpointError::MissingKeys(vec![name.to_string()]))?;
        let convert: fn(&[u8]) -> f32 = match info.dtype {
            Dtype::F32 => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            Dtype::F16 => |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            Dtype::BF16 => |b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            other => {
                return Err(CheckpointError::Safetensors(format!(
                    "tensor `{name}` has dtype {other:?}; only F32, F16 and BF16 weights can be loaded"
                )));
            }
        };
        let element = info.dtype.bitsize() / 8;
        let (start, end) = info.data_offsets;
        // Converted a chunk at a time, so that no second copy of a tensor is ever made
        // (nor freed: such holes fragment the heap, which in the browser never shrinks).
        let mut data = Vec::with_capacity((end - start) / element);
        let mut chunk = vec![0u8; CHUNK_BYTES.min(end - start)];
        let mut offset = start;
        while offset < end {
            let piece = &mut chunk[..CHUNK_BYTES.min(end - offset)];
            self.shards[*shard]
                .read_at(data_start + offset as u64, piece)
                .map_err(|error| {
                    CheckpointError::Safetensors(format!("cannot read tensor `{name}`: {error}"))
                })?;
            data.extend(piece.chunks_exact(element).map(convert));
            offset += piece.len();
        }
        Ok(Array::new(info.shape.clone(), data))
    }
}

/// The header of a safetensors file: where its data starts, and its tensors (checked
/// against each other and against the size of the file).
fn read_header(source: &dyn ByteSource) -> Result<(u64, Metadata), CheckpointError> {
    let invalid = |message: String| CheckpointError::Safetensors(message);
    let mut length = [0u8; 8];
    source
        .read_at(0, &mut length)
        .map_err(|_| invalid("shorter than a safetensors header".into()))?;
    let header_len = u64::from_le_bytes(length);
    if header_len > MAX_HEADER_BYTES || header_len > source.len().saturating_sub(8) {
        return Err(invalid(format!(
            "the header claims {header_len} bytes, more than the file holds or allows"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    source
        .read_at(8, &mut header)
        .map_err(|error| invalid(format!("cannot read the header: {error}")))?;
    let metadata: Metadata = serde_json::from_slice(&header)
        .map_err(|error| invalid(format!("invalid header: {error}")))?;
    let data_start = 8 + header_len;
    if data_start + metadata.data_len() as u64 != source.len() {
        return Err(invalid(format!(
            "the header describes {} bytes of data but the file holds {} (truncated or padded?)",
            metadata.data_len(),
            source.len() - data_start
        )));
    }
    Ok((data_start, metadata))
}

/// Serialises arrays as F32, or F16 when `float16`.
pub fn write(tensors: &BTreeMap<String, Array>, float16: bool) -> Result<Vec<u8>, CheckpointError> {
    let encoded: Vec<(&String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, array)| {
            let bytes = if float16 {
                array
                    .data
                    .iter()
                    .flat_map(|value| half::f16::from_f32(*value).to_le_bytes())
                    .collect()
            } else {
                array
                    .data
                    .iter()
                    .flat_map(|value| value.to_le_bytes())
                    .collect()
            };
            (name, array.shape.clone(), bytes)
        })
        .collect();
    let dtype = if float16 { Dtype::F16 } else { Dtype::F32 };
    let views = encoded
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(dtype, shape.clone(), bytes)
                .map(|view| (name.as_str(), view))
                .map_err(|error| CheckpointError::Safetensors(error.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, None)
        .map_err(|error| CheckpointError::Safetensors(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrays() -> BTreeMap<String, Array> {
        // One tensor larger than a read chunk, so conversion crosses chunk boundaries.
        let big = (CHUNK_BYTES / 4) * 3 + 5;
        BTreeMap::from([
            (
                "big".to_string(),
                Array::new(
                    vec![big],
                    (0..big).map(|i| (i % 64) as f32 * 0.25 - 7.0).collect(),
                ),
            ),
            (
                "small".to_string(),
                Array::new(vec![2, 3], vec![1.5, -2.0, 0.0, 3.25, 8.0, -0.5]),
            ),
        ])
    }

    #[test]
    fn files_and_memory_read_the_same_tensors_in_both_precisions() {
        let dir = tempfile::tempdir().expect("tempdir");
        for float16 in [false, true] {
            let bytes = write(&arrays(), float16).expect("write");
            let path = dir.path().join(format!("t{float16}.safetensors"));
            std::fs::write(&path, &bytes).expect("file");
            let file = FileSource::open(&path).expect("open");
            let from_file = Tensors::parse(&[&file]).expect("parse file");
            let from_memory = Tensors::parse(&[&bytes]).expect("parse memory");
            assert_eq!(from_file.names().collect::<Vec<_>>(), ["big", "small"]);
            for (name, expected) in arrays() {
                let read = from_file.get(&name).expect("get");
                // (assert!, not assert_eq!: the big tensor would fill the screen.)
                assert!(read == from_memory.get(&name).expect("get"), "{name}");
                // These values are exact in float16 too.
                assert!(read == expected, "{name}, float16 {float16}");
            }
        }
    }

    #[test]
    fn truncated_or_padded_files_and_bad_headers_are_refused() {
        let bytes = write(&arrays(), false).expect("write");
        for broken in [
            &bytes[..bytes.len() - 1],
            &[&bytes[..], &[0][..]].concat()[..],
        ] {
            let error = Tensors::parse(&[&broken])
                .err()
                .expect("refused")
                .to_string();
            assert!(error.contains("truncated or padded"), "{error}");
        }
        let mut huge_header = bytes.clone();
        huge_header[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Tensors::parse(&[&huge_header]).is_err());
        assert!(Tensors::parse(&[&&bytes[..5]]).is_err());
        // A name in two shards is ambiguous.
        let error = Tensors::parse(&[&bytes, &bytes])
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("two shards"), "{error}");
    }
}
