//! The sample images shipped with the site: real CIFAR-10 test images
//! (`web/assets/samples/`, copied to `dist/samples/`).

/// (class name, URL relative to the site's base).
pub const SAMPLES: [(&str, &str); 6] = [
    ("airplane", "samples/airplane.jpg"),
    ("cat", "samples/cat.jpg"),
    ("dog", "samples/dog.jpg"),
    ("frog", "samples/frog.jpg"),
    ("horse", "samples/horse.jpg"),
    ("ship", "samples/ship.jpg"),
];

#[cfg(test)]
mod tests {
    #[test]
    fn every_sample_is_shipped() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
        for (_, url) in super::SAMPLES {
            assert!(dir.join(url).is_file(), "missing {url}");
        }
    }
}
