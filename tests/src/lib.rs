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
