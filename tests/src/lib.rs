//! Helpers for the cross-crate tests: fixture files and the devices to test on.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::Device;
use vit::checkpoint::Array;

/// `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Every tensor of a fixture safetensors file, as f32.
pub fn read_tensors(name: &str) -> BTreeMap<String, Array> {
    let bytes =
        std::fs::read(fixture(name)).unwrap_or_else(|error| panic!("fixture {name}: {error}"));
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("fixture is valid safetensors");
    file.iter()
        .map(|(key, view)| {
            assert_eq!(
                view.dtype(),
                safetensors::Dtype::F32,
                "fixture {name}/{key} must be f32"
            );
            let data = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (key.to_string(), Array::new(view.shape().to_vec(), data))
        })
        .collect()
}

/// The CPU backends the parity tests run on.
pub fn devices() -> Vec<(&'static str, Device)> {
    #[allow(unused_mut)]
    let mut devices = vec![("flex", Device::flex())];
    #[cfg(feature = "ndarray")]
    #[allow(deprecated)] // kept on purpose: the design names burn-ndarray
    devices.push(("ndarray", Device::ndarray()));
    devices
}

/// Largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared arrays differ in length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Mutation fuzzing on stable Rust (`cargo fuzz` would need nightly), with `proptest`: each
/// case is a list of edits to a valid corpus file, fed to a parser that must answer `Ok` or an
/// error, never panic, and within a time limit. The seed is fixed, so a run is the same every
/// time, and a failure is shrunk to the fewest, smallest edits that still fail.
pub mod fuzz {
    use std::cell::Cell;
    use std::time::{Duration, Instant};

    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::{Index, select};
    use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

    /// Cases per corpus file: `VIT_FUZZ_CASES` (CI uses the default; a long run sets more).
    pub fn cases() -> u32 {
        env_number("VIT_FUZZ_CASES").map_or(300, |cases| cases as u32)
    }

    fn env_number(name: &str) -> Option<u64> {
        std::env::var(name)
            .ok()
            .and_then(|value| value.parse().ok())
    }

    /// A runner of `cases()` cases for corpus file `entry` of target `name`. Its seed mixes
    /// both (so targets do not all try the same edits) with `VIT_FUZZ_SEED` (0 unless a long
    /// run wants new ground); nothing is written to the source tree on failure.
    pub fn runner(name: &str, entry: usize) -> TestRunner {
        let seed = name.bytes().chain(entry.to_le_bytes()).fold(
            env_number("VIT_FUZZ_SEED").unwrap_or(0),
            |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3) // FNV-1a
            },
        );
        TestRunner::new(Config {
            cases: cases(),
            failure_persistence: None,
            rng_seed: RngSeed::Fixed(seed),
            // Shrinking re-runs the parser; bound it so a slow failure still ends.
            max_shrink_time: 120_000,
            ..Config::default()
        })
    }

    /// One edit; `Index` is a position anywhere in the file, whatever its length.
    #[derive(Clone, Debug)]
    pub enum Mutation {
        FlipBit(Index, u8),
        SetByte(Index, u8),
        /// Written over the bytes at the position (cut at the end of the file).
        Overwrite(Index, &'static [u8]),
        Insert(Index, Vec<u8>),
        Delete(Index, usize),
        Duplicate(Index, usize),
        Truncate(Index),
    }

    /// Bytes that break parsers more often than random ones.
    const BYTES: &[u8] = &[0x00, 0x01, 0x7F, 0x80, 0xFF, b'"', b'{', b'}', b'9', b','];

    /// Values that break length fields and headers: little-endian sizes and counts (zip,
    /// safetensors, .npy), octal sizes (tar), JSON and Python-literal numbers.
    const VALUES: &[&[u8]] = &[
        &[0; 4],
        &[0xFF; 4],
        &[0xFF, 0xFF, 0xFF, 0x7F],
        &[0x00, 0x00, 0x00, 0x80],
        &[0x00, 0x00, 0x01, 0x00],
        &[0; 8],
        &[0xFF; 8],
        &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
        &[0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00],
        b"77777777777",
        b"99999999999999999999",
        b"-1",
        b"1e999",
        b"0, 0",
    ];

    fn mutation() -> impl Strategy<Value = Mutation> {
        let byte = prop_oneof![select(BYTES), any::<u8>()];
        let run = 1..=64usize;
        prop_oneof![
            (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
            (any::<Index>(), byte).prop_map(|(at, byte)| Mutation::SetByte(at, byte)),
            (any::<Index>(), select(VALUES)).prop_map(|(at, v)| Mutation::Overwrite(at, v)),
            (any::<Index>(), vec(any::<u8>(), 1..=16)).prop_map(|(at, b)| Mutation::Insert(at, b)),
            (any::<Index>(), run.clone()).prop_map(|(at, len)| Mutation::Delete(at, len)),
            (any::<Index>(), run).prop_map(|(at, len)| Mutation::Duplicate(at, len)),
            any::<Index>().prop_map(Mutation::Truncate),
        ]
    }

    /// One to four edits, as the mutator before proptest made.
    pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
        vec(mutation(), 1..=4)
    }

    /// `input` with `mutations` applied in order. An empty file only takes insertions.
    pub fn apply(input: &[u8], mutations: &[Mutation]) -> Vec<u8> {
        let mut bytes = input.to_vec();
        for mutation in mutations {
            let len = bytes.len();
            if let Mutation::Insert(at, inserted) = mutation {
                let at = at.index(len + 1);
                bytes.splice(at..at, inserted.iter().copied());
                continue;
            }
            if len == 0 {
                continue;
            }
            match mutation {
                Mutation::FlipBit(at, bit) => bytes[at.index(len)] ^= 1 << bit,
                Mutation::SetByte(at, byte) => bytes[at.index(len)] = *byte,
                Mutation::Overwrite(at, value) => {
                    let at = at.index(len);
                    let end = (at + value.len()).min(len);
                    bytes[at..end].copy_from_slice(&value[..end - at]);
                }
                Mutation::Delete(at, run) => {
                    let at = at.index(len);
                    bytes.drain(at..(at + run).min(len));
                }
                Mutation::Duplicate(at, run) => {
                    let at = at.index(len);
                    let copy = bytes[at..(at + run).min(len)].to_vec();
                    bytes.splice(at..at, copy);
                }
                Mutation::Truncate(at) => bytes.truncate(at.index(len)),
                Mutation::Insert(..) => unreachable!("handled above"),
            }
        }
        bytes
    }

    /// Runs `parse` (true: accepted, false: refused with an error) on `cases()` mutations of
    /// each corpus file. Fails on a panic, or on a case slower than `limit`, naming the
    /// corpus file and the minimal edits that fail (the seed is fixed, so they replay).
    pub fn run(
        name: &str,
        corpus: &[Vec<u8>],
        limit: Duration,
        parse: impl Fn(&[u8]) -> bool,
    ) -> Report {
        let report = Cell::new(Report::default());
        for (entry, input) in corpus.iter().enumerate() {
            let outcome = runner(name, entry).run(&mutations(), |mutations| {
                let bytes = apply(input, &mutations);
                let started = Instant::now();
                let accepted = parse(&bytes);
                let took = started.elapsed();
                if took >= limit {
                    return Err(TestCaseError::fail(format!("took {took:?}")));
                }
                let mut seen = report.get();
                seen.accepted += u64::from(accepted);
                seen.refused += u64::from(!accepted);
                seen.slowest = seen.slowest.max(took);
                report.set(seen);
                Ok(())
            });
            if let Err(error) = outcome {
                panic!("fuzz {name}, corpus file {entry}: {error}");
            }
        }
        let report = report.get();
        eprintln!(
            "fuzz {name}: {} cases, {} accepted, {} refused with an error, slowest {:?}",
            report.accepted + report.refused,
            report.accepted,
            report.refused,
            report.slowest
        );
        report
    }

    /// What a fuzz run saw.
    #[derive(Debug, Default, Clone, Copy)]
    pub struct Report {
        pub accepted: u64,
        pub refused: u64,
        pub slowest: Duration,
    }
}
