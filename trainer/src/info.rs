//! `trainer info`: what this machine offers for training, checked before a run
//! rather than discovered an hour into it.

use std::path::Path;

use anyhow::Result;
use sysinfo::{Disks, System};

use crate::cli::InfoArgs;

pub fn run(args: &InfoArgs) -> Result<()> {
    println!("trainer {}", env!("CARGO_PKG_VERSION"));
    println!("backends (--device):");
    println!("  cpu        burn-flex on the CPU{}", cpu_features());
    if cfg!(feature = "ndarray") {
        println!("  ndarray    burn-ndarray on the CPU");
    }
    tch_devices();
    if !cfg!(feature = "tch") {
        println!("  (GPU: rebuild with `--features tch` against PyTorch; see the README)");
    }

    match System::new() {
        Ok(mut system) => {
            system.refresh_memory();
            println!(
                "memory: {} total, {} available",
                gib(system.total_memory()),
                gib(system.available_memory())
            );
        }
        Err(error) => println!("memory: unknown ({error})"),
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("threads: {cores} (all cores; --threads N uses fewer)");
    let existing = nearest_existing(&args.workdir);
    match free_space(&existing) {
        Some(free) => println!(
            "disk: {} free at {} (for --workdir {}; a ViT-B/16 checkpoint takes about 0.7 GB)",
            gib(free),
            existing.display(),
            args.workdir.display()
        ),
        None => println!("disk: free space at {} is unknown", existing.display()),
    }
    println!(
        "cache: {} (downloads: CIFAR, pretrained weights; --data-dir changes it)",
        crate::data::download::cache_dir().display()
    );
    Ok(())
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// The SIMD level the matrix kernels can use on this CPU.
fn cpu_features() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return " (AVX-512)";
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return " (AVX2)";
        }
    }
    ""
}

#[cfg(feature = "tch")]
fn tch_devices() {
    // Creating a tensor on each device is the check that does not depend on
    // libtorch internals: CUDA devices that fail here would fail in training too.
    use burn::tensor::{Device, Tensor};
    println!("  tch:cpu    libtorch on the CPU");
    // burn-tch panics on a missing device; probe quietly.
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut usable = Vec::new();
    for index in 0..16 {
        #[allow(deprecated)] // burn-tch is the GPU path the project builds today
        let device = Device::libtorch_cuda(index);
        let probe = std::panic::AssertUnwindSafe(|| Tensor::<1>::zeros([1], &device).into_data());
        if std::panic::catch_unwind(probe).is_err() {
            break;
        }
        usable.push(index);
    }
    std::panic::set_hook(previous_hook);
    if usable.is_empty() {
        println!("  (no CUDA device visible to libtorch)");
    }
    for index in usable {
        println!("  tch:cuda:{index} libtorch on CUDA device {index}");
    }
}

#[cfg(not(feature = "tch"))]
fn tch_devices() {}

/// The folder itself, or its nearest ancestor that exists (a new run's workdir
/// usually does not exist yet).
fn nearest_existing(path: &Path) -> std::path::PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    absolute
        .ancestors()
        .find(|ancestor| ancestor.exists())
        .map_or(absolute.clone(), Path::to_path_buf)
}

/// Free space on the file system holding `path`: the disk with the longest
/// mount point that contains it.
fn free_space(path: &Path) -> Option<u64> {
    let path = path.canonicalize().ok()?;
    let disks = Disks::new_with_refreshed_list().ok()?;
    disks
        .into_iter()
        .filter(|disk| path.starts_with(disk.mount_point()))
        .max_by_key(|disk| disk.mount_point().as_os_str().len())
        .map(|disk| disk.available_space())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_found_for_a_folder_that_does_not_exist_yet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("runs/new");
        let existing = nearest_existing(&missing);
        assert_eq!(existing, dir.path());
        assert!(free_space(&existing).is_some_and(|free| free > 0));
    }
}
