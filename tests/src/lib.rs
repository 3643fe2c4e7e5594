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

/// Mutation fuzzing on stable Rust: a corpus of valid files, each mutated at random (from
/// a seed, so a failure can be replayed) and fed to a parser, which must return `Ok` or an
/// error without panicking. `cargo fuzz` would need a nightly toolchain.
pub mod fuzz {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::time::{Duration, Instant};

    /// Cases per target: `VIT_FUZZ_CASES` (CI uses the default; a long run sets more).
    pub fn cases() -> u64 {
        std::env::var("VIT_FUZZ_CASES")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(300)
    }

    /// A small, fast, seeded generator (SplitMix64).
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Self {
            Self(seed)
        }

        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in `0..n` (n > 0).
        pub fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// Values that break parsers more often than random ones.
    const INTERESTING: &[u8] = &[0x00, 0x01, 0x7F, 0x80, 0xFF, b'"', b'{', b'}', b'9', b','];

    /// `input` with one to four random edits: bit flips, interesting bytes, truncation,
    /// insertion, or a duplicated or deleted run.
    pub fn mutate(input: &[u8], rng: &mut Rng) -> Vec<u8> {
        let mut bytes = input.to_vec();
        for _ in 0..1 + rng.below(4) {
            if bytes.is_empty() {
                bytes.push(rng.next_u64() as u8);
                continue;
            }
            let at = rng.below(bytes.len());
            match rng.below(6) {
                0 => bytes[at] ^= 1 << rng.below(8),
                1 => bytes[at] = INTERESTING[rng.below(INTERESTING.len())],
                2 => bytes.truncate(at),
                3 => {
                    let count = 1 + rng.below(16);
                    let inserted: Vec<u8> = (0..count).map(|_| rng.next_u64() as u8).collect();
                    bytes.splice(at..at, inserted);
                }
                4 => {
                    let end = (at + 1 + rng.below(64)).min(bytes.len());
                    let run = bytes[at..end].to_vec();
                    bytes.splice(at..at, run);
                }
                _ => {
                    let end = (at + 1 + rng.below(64)).min(bytes.len());
                    bytes.drain(at..end);
                }
            }
        }
        bytes
    }

    /// Runs `parse` on `cases()` mutations of each corpus entry. Fails on a panic, or on a
    /// case slower than `limit`, naming the seed that replays it.
    pub fn run(
        name: &str,
        corpus: &[Vec<u8>],
        limit: Duration,
        parse: impl Fn(&[u8]) -> bool,
    ) -> Report {
        let mut report = Report::default();
        for (entry, input) in corpus.iter().enumerate() {
            for case in 0..cases() {
                let seed = (entry as u64) << 32 | case;
                let mutated = mutate(input, &mut Rng::new(seed));
                let started = Instant::now();
                let outcome = catch_unwind(AssertUnwindSafe(|| parse(&mutated)));
                let took = started.elapsed();
                match outcome {
                    Ok(true) => report.accepted += 1,
                    Ok(false) => report.refused += 1,
                    Err(_) => panic!("{name}: seed {seed} panicked"),
                }
                assert!(took < limit, "{name}: seed {seed} took {took:?}");
                report.slowest = report.slowest.max(took);
            }
        }
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
    #[derive(Debug, Default)]
    pub struct Report {
        pub accepted: u64,
        pub refused: u64,
        pub slowest: Duration,
    }
}
